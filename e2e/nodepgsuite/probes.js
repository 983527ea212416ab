'use strict'
// Our own checks (mocha) of node-postgres paths that its integration tests
// reach only after a CREATE TEMP TABLE or a LISTEN, so that in transaction
// pool mode they never run there: notices, the client's own cancel
// (CancelRequest on a new connection), a Query of several statements that
// fails midway, binary results, COPY FROM through pg-copy-streams, a cursor
// outside a transaction. They use regular tables (the tenant's shard schema
// through the router), and run in every mode. Run by e2e/nodepgsuite.
const assert = require('assert')
const path = require('path')
const pg = require('pg')
const Cursor = require('../')
const copy = require(path.join(process.env.NODEPG_PG_DIR, 'node_modules', 'pg-copy-streams'))

async function connect(config) {
  const c = new pg.Client(config)
  await c.connect()
  return c
}

describe('probes', function () {
  let client
  beforeEach(async function () {
    client = await connect({ keepAlive: true, application_name: 'nodepg-probe' })
  })
  afterEach(async function () {
    await client.end()
  })

  it('relays a notice raised by a DO block with its fields', async function () {
    let notice
    client.on('notice', (n) => (notice = n))
    await client.query(
      `DO $$ BEGIN RAISE NOTICE 'hello' USING ERRCODE = '23505', DETAIL = 'probe'; END $$`
    )
    assert.ok(notice, 'no notice')
    assert.strictEqual(notice.message, 'hello')
    assert.strictEqual(notice.detail, 'probe')
    assert.strictEqual(notice.code, '23505')
    assert.strictEqual((await client.query('SELECT 1 AS one')).rows[0].one, 1)
  })

  it('cancels a running query with the client cancel (57014), then serves the client', async function () {
    // cancel needs the Query object: client.query(text) gives a promise.
    const q = client.query(new pg.Query('SELECT pg_sleep(30)'))
    const failed = new Promise((resolve) => q.on('error', resolve))
    await new Promise((resolve) => setTimeout(resolve, 300))
    const canceller = new pg.Client()
    canceller.cancel(client, q)
    assert.strictEqual((await failed).code, '57014')
    assert.strictEqual((await client.query('SELECT 2 AS two')).rows[0].two, 2)
  })

  it('fails a several-statement Query midway as PostgreSQL does, and the client goes on', async function () {
    await client.query('DROP TABLE IF EXISTS nodepg_probe_multi; CREATE TABLE nodepg_probe_multi (n int)')
    await assert.rejects(
      client.query('INSERT INTO nodepg_probe_multi VALUES (1); SELECT 1/0; INSERT INTO nodepg_probe_multi VALUES (2)'),
      (err) => err.code === '22012'
    )
    // The Query ran as one implicit transaction: the first INSERT is gone.
    assert.strictEqual((await client.query('SELECT count(*)::int AS n FROM nodepg_probe_multi')).rows[0].n, 0)
    const res = await client.query('SELECT 1 AS a; SELECT 2 AS b')
    assert.deepStrictEqual(
      res.map((r) => r.rows[0]),
      [{ a: 1 }, { b: 2 }]
    )
    await client.query('DROP TABLE nodepg_probe_multi')
  })

  it('returns binary results', async function () {
    const res = await client.query({ text: 'SELECT $1::int4 AS n, $2::text AS t', values: [7, 'x'], binary: true })
    assert.strictEqual(res.rows[0].n, 7)
    assert.strictEqual(res.rows[0].t, 'x')
  })

  // pg-copy-streams 0.3.0 (what packages/pg's tests pin): its COPY FROM
  // stream emits 'end' when the server has answered.
  const copyIn = (sql, lines) =>
    new Promise((resolve, reject) => {
      const stream = client.query(copy.from(sql))
      stream.on('end', resolve)
      stream.on('error', reject)
      for (const line of lines) stream.write(line)
      stream.end()
    })

  it('copies in with pg-copy-streams, and a bad row fails the COPY (22P02) and the client goes on', async function () {
    await client.query('DROP TABLE IF EXISTS nodepg_probe_copy; CREATE TABLE nodepg_probe_copy (n int, s text)')
    const lines = []
    for (let i = 0; i < 1000; i++) lines.push(`${i}\trow ${i}\n`)
    await copyIn('COPY nodepg_probe_copy FROM STDIN', lines)
    assert.strictEqual((await client.query('SELECT sum(n)::int AS s FROM nodepg_probe_copy')).rows[0].s, 499500)
    await assert.rejects(copyIn('COPY nodepg_probe_copy FROM STDIN', ['1\tok\n', 'x\tbad\n']), (err) => err.code === '22P02')
    assert.strictEqual((await client.query('SELECT count(*)::int AS n FROM nodepg_probe_copy')).rows[0].n, 1000)
    await client.query('DROP TABLE nodepg_probe_copy')
  })

  it('reads a cursor in pieces outside a transaction, closes it, and goes on', async function () {
    const cursor = client.query(new Cursor('SELECT n FROM generate_series(1, 10) n'))
    const read = (n) => new Promise((resolve, reject) => cursor.read(n, (err, rows) => (err ? reject(err) : resolve(rows))))
    assert.deepStrictEqual((await read(3)).map((r) => r.n), [1, 2, 3])
    assert.deepStrictEqual((await read(3)).map((r) => r.n), [4, 5, 6])
    await new Promise((resolve) => cursor.close(resolve))
    assert.strictEqual((await client.query('SELECT 3 AS three')).rows[0].three, 3)
  })

  it('times out a query on the client (query_timeout), and a new client is served', async function () {
    const c = await connect({ query_timeout: 200 })
    await assert.rejects(c.query('SELECT pg_sleep(3)'), /timeout/)
    await c.end()
    assert.strictEqual((await client.query('SELECT 4 AS four')).rows[0].four, 4)
  })
})
