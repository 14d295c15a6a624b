import pg from "pg";
import { createClient } from "redis";

// What the page and the status route show: one round trip to each add-on, with the values Diploi gives.
export async function check() {
  const env = process.env;
  const db = new pg.Client({
    host: env.POSTGRES_HOST,
    port: Number(env.POSTGRES_PORT),
    user: env.POSTGRES_USER,
    password: env.POSTGRES_PASSWORD,
    database: env.POSTGRES_DB,
  });
  await db.connect();
  try {
    await db.query("CREATE TABLE IF NOT EXISTS visits (at timestamptz DEFAULT now())");
    await db.query("INSERT INTO visits DEFAULT VALUES");
    const { rows } = await db.query("SELECT count(*)::int AS n, current_database() AS name FROM visits");
    const cache = createClient({ url: process.env.REDIS_URL });
    await cache.connect();
    try {
      const hits = await cache.incr("hits");
      return { database: rows[0].name, visits: rows[0].n, hits, nodeEnv: env.NODE_ENV, secret: env.SESSION_SECRET };
    } finally {
      await cache.quit();
    }
  } finally {
    await db.end();
  }
}
