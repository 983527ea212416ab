// An Express app on pgtenant. DATABASE_URL points at the router; the tenant
// comes from the X-Tenant header and is named per transaction with
// set_config('pgtenant.tenant', $1, true), so a pooled client never carries
// it into the next request.
'use strict';
const express = require('express');

// withTenant runs fn(client) in one transaction on tenant's shard.
async function withTenant(pool, tenant, fn) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query("SELECT set_config('pgtenant.tenant', $1, true)", [tenant]);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

// The router's SQLSTATEs for a tenant it does not know (42704) or no tenant
// at all (3D000) are the caller's mistake: 404, not 500.
function sendError(res, err) {
  const status = err.code === '42704' || err.code === '3D000' ? 404 : 500;
  res.status(status).json({ error: err.message, sqlstate: err.code });
}

function createApp(pool) {
  const app = express();
  app.use(express.json());
  app.use((req, res, next) => {
    req.tenant = req.get('X-Tenant') || '';
    next();
  });

  app.get('/projects', async (req, res) => {
    try {
      const rows = await withTenant(pool, req.tenant, async (c) => {
        // A named query: node-postgres prepares it once per connection, the
        // router once per backend and shard.
        const r = await c.query({
          name: 'list-projects',
          text: `SELECT p.id::int AS id, p.name, count(t.id)::int AS tasks
                 FROM projects p LEFT JOIN tasks t ON t.project_id = p.id AND t.tenant_id = p.tenant_id
                 WHERE p.tenant_id = $1 GROUP BY p.id, p.name ORDER BY p.id`,
          values: [req.tenant],
        });
        return r.rows;
      });
      res.json(rows);
    } catch (err) {
      sendError(res, err);
    }
  });

  app.post('/projects', async (req, res) => {
    try {
      const id = await withTenant(pool, req.tenant, async (c) => {
        const r = await c.query('INSERT INTO projects (name) VALUES ($1) RETURNING id::int AS id', [req.body.name]);
        for (const title of req.body.tasks || []) {
          await c.query('INSERT INTO tasks (project_id, title) VALUES ($1, $2)', [r.rows[0].id, title]);
        }
        return r.rows[0].id;
      });
      res.status(201).json({ id });
    } catch (err) {
      sendError(res, err);
    }
  });
  return app;
}

module.exports = { createApp, withTenant };
