/**
 * `bun run bench [-- options]`: kvnode's benchmarks. Machines here are shared and noisy, so every
 * figure that matters is also printed as a ratio to a baseline measured in the same run.
 *
 *   --quick         smaller data sets and 1 s runs: a smoke run in under a minute, rough figures
 *   --json [FILE]   also write machine-readable results (default bench/results.json)
 *   --only A,B      run only these sections: micro, storage, cluster, memory
 */
import { measure, run } from "mitata";
import { collectingApi, registerMicro } from "./micro.ts";
import type { BenchContext, Section } from "./context.ts";
import { fmt, printTable } from "./load.ts";

const argv = process.argv.slice(2);
const quick = argv.includes("--quick");
const jsonAt = argv.indexOf("--json");
const jsonFile = jsonAt >= 0 ? (argv[jsonAt + 1] && !argv[jsonAt + 1]!.startsWith("--") ? argv[jsonAt + 1]! : "bench/results.json") : null;
const onlyAt = argv.indexOf("--only");
const only = onlyAt >= 0 ? new Set((argv[onlyAt + 1] ?? "").split(",")) : null;
const wanted = (s: string) => !only || only.has(s);

const ctx: BenchContext = { quick, results: {} };
console.log(`kvnode benchmarks: bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, ${quick ? "quick" : "full"} run`);

if (wanted("micro") && quick) {
  // mitata gives each benchmark at least ~0.64 s of CPU: too long for a one-minute --quick run.
  // Measure the same functions with its `measure`, 40 ms each.
  const list: { name: string; fn: () => unknown }[] = [];
  registerMicro({ quick }, collectingApi(list));
  const micro = [];
  for (const b of list) {
    const st = await measure(b.fn, { min_cpu_time: 40e6 });
    micro.push({ name: b.name, ns_per_op: st.avg, ops_per_s: Math.round(1e9 / st.avg), p99_ns: st.p99 });
  }
  ctx.results.micro = micro;
  printTable(
    ["micro-benchmark (--quick: 40 ms each)", "ns/op", "ops/s", "p99 ns"],
    micro.map((m) => [m.name, fmt(m.ns_per_op, 1), fmt(m.ops_per_s, 0), fmt(m.p99_ns, 1)]),
  );
} else if (wanted("micro")) {
  registerMicro({ quick });
  const result = await run();
  // mitata returns the group names in `layout` (not in its type declarations); b.group indexes it.
  const layout = (result as unknown as { layout: { name: string | number | null }[] }).layout;
  const groupName = (b: object) => layout[(b as { group?: number }).group ?? -1]?.name || "";
  const micro = result.benchmarks.flatMap((b) =>
    b.runs.map((r) => ({ name: groupName(b) ? `${groupName(b)}: ${r.name}` : r.name, ns_per_op: r.stats?.avg ?? null, ops_per_s: r.stats ? Math.round(1e9 / r.stats.avg) : null, p99_ns: r.stats?.p99 ?? null })),
  );
  ctx.results.micro = micro;
  console.log("");
  printTable(
    ["micro-benchmark", "ns/op", "ops/s", "p99 ns"],
    micro.map((m) => [m.name, fmt(m.ns_per_op, 1), fmt(m.ops_per_s, 0), fmt(m.p99_ns, 1)]),
  );
}

// Each section is bench/<name>.ts exporting `run(ctx)`.
for (const name of ["storage", "cluster", "memory"]) {
  if (!wanted(name)) continue;
  const path = `${import.meta.dir}/${name}.ts`;
  if (!(await Bun.file(path).exists())) continue;
  const section = (await import(path)).run as Section;
  console.log(`\n=== ${name} ===`);
  ctx.results[name] = await section(ctx);
}

if (jsonFile) {
  await Bun.write(jsonFile, JSON.stringify({ bun: Bun.version, cores: navigator.hardwareConcurrency, quick, date: new Date().toISOString(), ...ctx.results }, null, 2));
  console.log(`\nresults written to ${jsonFile}`);
}
