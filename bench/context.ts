/** What every benchmark section receives, and what it returns for --json. */
export interface BenchContext {
  quick: boolean;
  results: Record<string, unknown>;
}

export type Section = (ctx: BenchContext) => Promise<unknown>;
