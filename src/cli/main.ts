/**
 * The `tessera` command. Each subcommand lives in its own file and exports `register(program)`;
 * this file only wires them up and turns thrown errors into exit codes.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { register as registerTrain } from './train.js';
import { register as registerEval } from './eval.js';
import { register as registerGenerate } from './generate.js';
import { register as registerExport } from './export.js';
import { register as registerBench } from './bench.js';
import { register as registerSim } from './sim.js';
import { register as registerRun } from './run.js';
import { register as registerNode } from './node.js';
import { register as registerDemo } from './demo.js';
import { register as registerData } from './data.js';
import { register as registerLedger } from './ledger.js';
import { register as registerPipeline } from './pipeline.js';
import { register as registerStage } from './stage.js';
import { register as registerAttack } from './attack.js';
import { register as registerImport } from './import.js';
import { reportError } from './output.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

export function buildProgram(): Command {
  const program = new Command('tessera')
    .description('Train a GPT together on spare compute; own the result together.')
    .version(pkg.version)
    .showHelpAfterError('(run with --help for usage)')
    .configureHelp({ showGlobalOptions: true })
    .exitOverride(); // inherited by subcommands: errors come back to main() as CommanderError
  registerTrain(program);
  registerEval(program);
  registerGenerate(program);
  registerExport(program);
  registerImport(program);
  registerBench(program);
  registerSim(program);
  registerRun(program);
  registerNode(program);
  registerDemo(program);
  registerData(program);
  registerLedger(program);
  registerPipeline(program);
  registerAttack(program);
  registerStage(program);
  const usageHelp = (c: Command, path: string): void => {
    c.showHelpAfterError(
      `usage: ${path} ${c.usage()}\n(run 'tessera ${path.replace(/^tessera ?/, '')}${path === 'tessera' ? '' : ' '}--help' for every option)`,
    );
    c.commands.forEach((sub) => usageHelp(sub, `${path} ${sub.name()}`));
  };
  program.commands.forEach((c) => usageHelp(c, `tessera ${c.name()}`));
  return program;
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    return reportError(err, { json });
  }
}

process.exitCode = await main(process.argv);
