/**
 * `bun run bench [-- --quick] [-- --json FILE]`: kvnode's benchmarks.
 * --quick   smaller data sets (finishes in well under a minute)
 * --json F  also write mitata's machine-readable results to F
 */
import { run } from "mitata";
import { registerMicro } from "./micro.ts";

const argv = process.argv.slice(2);
const quick = argv.includes("--quick");
const jsonAt = argv.indexOf("--json");
const jsonFile = jsonAt >= 0 ? (argv[jsonAt + 1] ?? "bench/results.json") : null;

console.log(`kvnode benchmarks: bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, ${quick ? "quick" : "full"} run`);
registerMicro({ quick });
const result = await run();
if (jsonFile) {
  const out = result.benchmarks.flatMap((b) =>
    b.runs.map((r) => ({ name: r.name, ns_per_op: r.stats?.avg, ops_per_s: r.stats ? 1e9 / r.stats.avg : null, p99_ns: r.stats?.p99 })),
  );
  await Bun.write(jsonFile, JSON.stringify({ bun: Bun.version, quick, micro: out }, null, 2));
  console.log(`results written to ${jsonFile}`);
}
