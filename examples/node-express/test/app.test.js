// Runs against a pgtenant router (DATABASE_URL) whose shards have
// examples/schema applied and tenants acme, globex and initech registered.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Pool } = require('pg');
const { createApp, withTenant } = require('../app');

let pool, server, base;

before(async () => {
  assert.ok(process.env.DATABASE_URL, 'DATABASE_URL must point at the router');
  pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
  server = createApp(pool).listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
  await pool.end();
});

async function call(method, path, tenant, body) {
  const res = await fetch(base + path, {
    method,
    headers: { 'X-Tenant': tenant, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

test('each request sees only its tenant', async () => {
  const tag = `node-${process.pid}`;
  for (const tenant of ['acme', 'globex', 'initech']) {
    const r = await call('POST', '/projects', tenant, { name: `${tag}-${tenant}`, tasks: ['a', 'b'] });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
  // Many requests in parallel over a pool of 4 clients, tenants interleaved.
  const lists = await Promise.all(
    Array.from({ length: 30 }, (_, i) => ['acme', 'globex', 'initech'][i % 3]).map((t) =>
      call('GET', '/projects', t).then((r) => ({ t, r })),
    ),
  );
  for (const { t, r } of lists) {
    assert.equal(r.status, 200);
    const mine = r.body.filter((p) => p.name.startsWith(tag));
    assert.deepEqual(mine.map((p) => [p.name, p.tasks]), [[`${tag}-${t}`, 2]]);
  }
});

test('the tenant does not outlive the transaction on a pooled client', async () => {
  const one = new Pool({ connectionString: process.env.DATABASE_URL, max: 1 });
  try {
    const shard = await withTenant(one, 'acme', async (c) => (await c.query("SELECT current_setting('pgtenant.tenant_id') AS t")).rows[0].t);
    assert.equal(shard, 'acme');
    // Same client, next request, no tenant named: a table is refused (3D000).
    await assert.rejects(one.query('SELECT count(*) FROM projects'), (err) => err.code === '3D000');
  } finally {
    await one.end();
  }
});

test('a failed request rolls back and the client stays usable', async () => {
  const before = await call('GET', '/projects', 'globex');
  const r = await call('POST', '/projects', 'globex', { name: null, tasks: [] });
  assert.equal(r.status, 500);
  assert.equal(r.body.sqlstate, '23502'); // not_null_violation from Postgres, through the router
  const after = await call('GET', '/projects', 'globex');
  assert.deepEqual(after.body, before.body);
});

test('an unknown tenant is a 404 with the router\'s SQLSTATE', async () => {
  const r = await call('GET', '/projects', 'nobody');
  assert.equal(r.status, 404);
  assert.equal(r.body.sqlstate, '42704');
});
