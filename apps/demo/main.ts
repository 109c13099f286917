/**
 * `npm run demo [-- FLAGS]`: the main job of kmcl. Parses the flags, runs {@link runDemo} and
 * maps failures to exit codes: 2 for a usage error (the message names the flag), 1 for a
 * failure while running. See `npm run demo -- --help` and docs/demo.md.
 */
import { DEMO_USAGE, DemoArgsError, parseDemoArgs, runDemo } from './run.js';

async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseDemoArgs(argv);
  } catch (e) {
    if (e instanceof DemoArgsError) {
      process.stderr.write(`kmcl demo: ${e.message}\nRun 'npm run demo -- --help' for the flags.\n`);
      return e.exitCode;
    }
    throw e;
  }
  if (parsed.help) {
    process.stdout.write(`${DEMO_USAGE}\n`);
    return 0;
  }
  try {
    await runDemo(parsed.config, { argv });
    return 0;
  } catch (e) {
    if (e instanceof DemoArgsError) {
      process.stderr.write(`kmcl demo: ${e.message}\n`);
      return e.exitCode;
    }
    const err = e as Error;
    process.stderr.write(`kmcl demo failed: ${err?.message ?? String(e)}\n`);
    if (process.env.KMCL_DEBUG && err?.stack) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

// The tfjs wasm backend installs an uncaughtException handler that rethrows; exit explicitly
// with the code so nothing after the run (pending timers of the backend) keeps the process up.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`kmcl demo failed: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  },
);
