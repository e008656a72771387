#!/usr/bin/env bun
/**
 * `bun run kvnode [flags]`: start one node. Exit status: 0 after a clean shutdown (SIGINT/SIGTERM),
 * 2 for a bad command line, 1 when the node cannot start.
 */
import { defineCommand, runMain } from "citty";
import { createLogger } from "../lib/log.ts";
import { type RunningNode, startNode } from "../node/node.ts";
import { UsageError, argsDef, normalizeArgv, toConfig } from "./args.ts";
import pkg from "../../package.json" with { type: "json" };

/** A second SIGINT/SIGTERM this long after the first stops the node at once. */
const SECOND_SIGNAL_MS = 1000;

function fail(status: number, line: string): never {
  process.stderr.write(`kvnode: ${line}\n`);
  process.exit(status);
}

const command = defineCommand({
  meta: { name: "kvnode", version: pkg.version, description: "Distributed key-value store node" },
  args: argsDef,
  async run({ args }) {
    let config;
    try {
      config = toConfig(args);
    } catch (e) {
      if (e instanceof UsageError) fail(2, e.message);
      throw e;
    }
    const log = createLogger(config.logLevel, (l) => process.stderr.write(l));
    // Handlers go in before the node starts: a signal during start-up stops it once it is up.
    let stoppingSince = -1;
    let started: Promise<RunningNode> | null = null;
    const shutdown = async (signal: string) => {
      if (stoppingSince >= 0) {
        // Under `bun run`, Ctrl-C reaches the node twice at once (from the terminal and passed on
        // by bun): only a second signal a moment later means "stop now".
        if (performance.now() - stoppingSince > SECOND_SIGNAL_MS) process.exit(1);
        return;
      }
      stoppingSince = performance.now();
      log.info("shutting down", { signal });
      const node = await started?.catch(() => null);
      await node?.stop();
      process.exit(0);
    };
    process.on("SIGINT", () => void shutdown("SIGINT"));
    process.on("SIGTERM", () => void shutdown("SIGTERM"));
    try {
      started = startNode(config, log);
      await started;
    } catch (e) {
      fail(1, `cannot start: ${(e as Error).message}`);
    }
  },
});

let rawArgs: string[];
try {
  rawArgs = normalizeArgv(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) fail(2, e.message);
  throw e;
}
await runMain(command, { rawArgs });
