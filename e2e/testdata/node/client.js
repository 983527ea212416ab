// node-postgres through the pgtenant router. Run by e2e/node_test.go with
// ROUTER_URL=postgres://user@host:port/db?sslmode=disable; prints one JSON
// object of results on stdout for the Go test to check. Cancel is not covered:
// node-postgres has no per-query cancel API.
'use strict';
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');

const base = process.env.ROUTER_URL;

async function connect(tenant) {
  const c = new Client({
    connectionString: base,
    options: tenant ? `-c pgtenant.tenant=${tenant}` : undefined,
  });
  await c.connect();
  return c;
}

async function code(p) {
  try {
    await p;
    return null;
  } catch (e) {
    return e.code || String(e);
  }
}

const WHERE = "SELECT shard, node, current_setting('pgtenant.tenant_id') AS tenant FROM shard_info";

async function main() {
  const out = {};

  // Simple and parameterized queries with the tenant from the startup options.
  const c3 = await connect('t3');
  out.simple = (await c3.query(WHERE)).rows[0];
  out.param = (await c3.query(
    'SELECT count(*)::int AS n, sum(qty)::int AS s FROM items WHERE tenant = $1 AND qty >= $2', ['t3', 20])).rows[0];
  out.hint = (await c3.query('/* tenant: t6 */ SELECT shard FROM shard_info')).rows[0].shard;
  await c3.end();

  // Named prepared statements reused across transactions and tenants.
  const cp = await connect('');
  out.prepared = [];
  for (const [tenant, id] of [['t1', 101], ['t4', 401], ['t9', 903], ['t4', 405], ['t1', 102]]) {
    await cp.query('BEGIN');
    await cp.query(`SET LOCAL pgtenant.tenant = '${tenant}'`);
    const r = await cp.query({ name: 'by_id', text: 'SELECT name, shard FROM items WHERE id = $1', values: [id] });
    await cp.query('COMMIT');
    out.prepared.push({ tenant, ...r.rows[0] });
  }

  // Transaction rolled back, then one committed.
  await cp.query("SET pgtenant.tenant = 't2'");
  await cp.query('BEGIN');
  await cp.query('UPDATE items SET qty = 999 WHERE id = 201');
  const inTx = (await cp.query('SELECT qty FROM items WHERE id = 201')).rows[0].qty;
  await cp.query('ROLLBACK');
  const after = (await cp.query('SELECT qty FROM items WHERE id = 201')).rows[0].qty;
  out.rollback = { inTx, after };

  // Errors carry the server's SQLSTATE.
  out.errors = {
    duplicate: await code(cp.query("INSERT INTO items (id, tenant, name, qty) VALUES (201, 't2', 'dup', 1)")),
    missingTable: await code(cp.query('SELECT * FROM nope')),
    unknownTenant: await code(cp.query('/* tenant: nobody */ SELECT * FROM items')),
  };
  await cp.query('BEGIN');
  await cp.query('SELECT 1 FROM items LIMIT 1');
  out.errors.crossShard = await code(cp.query('/* tenant: t1 */ SELECT * FROM items'));
  out.errors.aborted = await code(cp.query('SELECT 1 FROM items'));
  await cp.query('ROLLBACK');
  out.errors.afterRollback = (await cp.query('SELECT shard FROM shard_info')).rows[0].shard;

  // Switching tenants between transactions.
  out.switching = [];
  for (const t of ['t0', 't1', 't8', 't15']) {
    await cp.query(`SET pgtenant.tenant = '${t}'`);
    out.switching.push((await cp.query(WHERE)).rows[0]);
  }
  await cp.end();

  // set_config with a bind parameter, as an ORM would send it.
  const cs = await connect('');
  await cs.query('BEGIN');
  await cs.query("SELECT set_config('pgtenant.tenant', $1, true)", ['t13']);
  out.setConfig = (await cs.query(WHERE)).rows[0];
  await cs.query('COMMIT');
  await cs.end();

  // CTE, window functions, joins and EXPLAIN ANALYZE.
  const c11 = await connect('t11');
  out.complex = (await c11.query(`
    WITH totals AS (
      SELECT i.id, i.name, sum(o.amount)::int AS total
      FROM items i JOIN orders o ON o.item_id = i.id
      WHERE i.tenant = $1 GROUP BY i.id, i.name)
    SELECT name, total, rank() OVER (ORDER BY total DESC, id)::int AS r, (sum(total) OVER ())::int AS grand
    FROM totals ORDER BY r`, ['t11'])).rows;
  const plan = await c11.query("EXPLAIN ANALYZE SELECT * FROM items i JOIN orders o ON o.item_id = i.id WHERE i.tenant = 't11'");
  out.explain = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
  await c11.end();

  // COPY both ways through pg-copy-streams.
  const c5 = await connect('t5');
  const lines = [];
  for (let k = 0; k < 50; k++) lines.push(`${5000 + k}\tt5\tnode-${k}\t${k}\n`);
  await pipeline(Readable.from(lines), c5.query(copyFrom('COPY items (id, tenant, name, qty) FROM STDIN')));
  let copied = '';
  await pipeline(
    c5.query(copyTo('COPY (SELECT id, shard, name FROM items WHERE id >= 5000 ORDER BY id) TO STDOUT')),
    new Writable({ write(chunk, _enc, cb) { copied += chunk; cb(); } }),
  );
  const copiedLines = copied.trimEnd().split('\n');
  out.copy = { rows: copiedLines.length, first: copiedLines[0], last: copiedLines[copiedLines.length - 1] };
  await c5.query('DELETE FROM items WHERE id >= 5000');
  await c5.end();

  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
