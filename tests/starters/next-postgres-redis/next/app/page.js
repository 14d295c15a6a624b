import { check } from "../lib/services";

export const dynamic = "force-dynamic";

export default async function Home() {
  const seen = await check();
  return (
    <main>
      <h1>Hello from Next.js</h1>
      <p>
        Database {seen.database}: {seen.visits} visits. Redis: {seen.hits} hits.
      </p>
    </main>
  );
}
