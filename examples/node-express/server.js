'use strict';
const { Pool } = require('pg');
const { createApp } = require('./app');

const pool = new Pool({ connectionString: process.env.DATABASE_URL });
const port = Number(process.env.PORT || 3000);
createApp(pool).listen(port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port}`));
