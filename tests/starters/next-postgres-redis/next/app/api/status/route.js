import { check } from "../../../lib/services";

export const dynamic = "force-dynamic";

export async function GET() {
  return Response.json(await check());
}
