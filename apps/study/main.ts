/**
 * `npm run study [-- FLAGS]`: parses the flags, runs {@link runStudy} and maps failures to exit
 * codes: 2 for a usage error (the message names the flag), 1 for a failure while running.
 * See `npm run study -- --help` and docs/study.md.
 */
import { DemoArgsError } from '../demo/run.js';
import { parseStudyArgs, runStudy, STUDY_USAGE } from './study.js';

async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseStudyArgs(argv);
  } catch (e) {
    if (e instanceof DemoArgsError) {
      process.stderr.write(`kmcl study: ${e.message}\nRun 'npm run study -- --help' for the flags.\n`);
      return e.exitCode;
    }
    throw e;
  }
  if (parsed.help) {
    process.stdout.write(`${STUDY_USAGE}\n`);
    return 0;
  }
  try {
    await runStudy(parsed.config, { argv });
    return 0;
  } catch (e) {
    if (e instanceof DemoArgsError) {
      process.stderr.write(`kmcl study: ${e.message}\n`);
      return e.exitCode;
    }
    const err = e as Error;
    process.stderr.write(`kmcl study failed: ${err?.message ?? String(e)}\n`);
    if (process.env.KMCL_DEBUG && err?.stack) process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

// As in the demo: exit explicitly so pending timers of the wasm backend do not keep the process up.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`kmcl study failed: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  },
);
