/**
 * Progress display of the demo: one bar per epoch on stderr with the running means of the loss
 * parts, the epoch's ETA and the run's ETA; or, when the stream is not a TTY, one line per
 * epoch; or nothing (`--json`).
 */
import type { StepInfo } from 'kmcl/tfjs';

/** 'bar': a redrawn bar (TTY); 'lines': one line per epoch; 'off': silent. */
export type ProgressMode = 'bar' | 'lines' | 'off';

/** The part of a writable stream the progress display uses. */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** The mode for a run: off with `--json`, a bar on a TTY, lines otherwise. */
export function progressModeFor(json: boolean, stream: ProgressStream): ProgressMode {
  if (json) return 'off';
  return stream.isTTY ? 'bar' : 'lines';
}

/** `m:ss` (or `h:mm:ss`) of a duration in milliseconds; `--:--` when unknown. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '--:--';
  const total = Math.round(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Formats a loss value with about 4 significant digits. */
export function formatLoss(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  if (a >= 10) return v.toFixed(2);
  return v.toFixed(3);
}

export interface EpochProgressConfig {
  /** Name of the run, e.g. 'KMCL' or 'ASL-only'. */
  label: string;
  epochs: number;
  stepsPerEpoch: number;
  mode: ProgressMode;
  stream: ProgressStream;
  /** Whether the reconstruction and contrastive parts are shown (false for the ASL-only run). */
  showAuxiliary?: boolean;
  /** Minimum time between two redraws of the bar, ms (default 100). */
  redrawMs?: number;
}

/** What {@link EpochProgress.endEpoch} reports for an epoch. */
export interface EpochSummary {
  epoch: number;
  loss: number;
  asl: number;
  reconstruction: number;
  contrastive: number;
  valMAP: number | null;
  timeMs: number;
}

/**
 * Tracks one training run: call {@link step} for every step and {@link endEpoch} after every
 * epoch. Running means are over the current epoch's steps.
 */
export class EpochProgress {
  private readonly cfg: Required<EpochProgressConfig>;
  private epochSteps = 0;
  private sums = { loss: 0, asl: 0, reconstruction: 0, contrastive: 0 };
  private stepMsTotal = 0;
  private stepsDone = 0;
  private epochStart = performance.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(config: EpochProgressConfig) {
    this.cfg = { showAuxiliary: true, redrawMs: 100, ...config };
  }

  /** Running means of the current epoch. */
  get means(): { loss: number; asl: number; reconstruction: number; contrastive: number } {
    const n = Math.max(1, this.epochSteps);
    return {
      loss: this.sums.loss / n,
      asl: this.sums.asl / n,
      reconstruction: this.sums.reconstruction / n,
      contrastive: this.sums.contrastive / n,
    };
  }

  step(info: StepInfo): void {
    if (this.epochSteps === 0) this.epochStart = performance.now() - info.stepMs;
    this.epochSteps++;
    this.stepsDone++;
    this.stepMsTotal += info.stepMs;
    this.sums.loss += info.loss;
    this.sums.asl += info.asl;
    this.sums.reconstruction += info.reconstruction;
    this.sums.contrastive += info.contrastive;
    if (this.cfg.mode !== 'bar') return;
    const now = performance.now();
    if (now - this.lastDraw < this.cfg.redrawMs && this.epochSteps < this.cfg.stepsPerEpoch) return;
    this.lastDraw = now;
    this.draw(info.epoch);
  }

  /** The line a bar shows after `epochSteps` steps of `epoch` (exposed for tests). */
  barLine(epoch: number): string {
    const { epochs, stepsPerEpoch, label } = this.cfg;
    const done = Math.min(this.epochSteps, stepsPerEpoch);
    const width = 20;
    const filled = Math.round((done / stepsPerEpoch) * width);
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    const perStep = this.stepsDone > 0 ? this.stepMsTotal / this.stepsDone : Number.NaN;
    const epochEta = (stepsPerEpoch - done) * perStep;
    const runEta = (epochs * stepsPerEpoch - this.stepsDone) * perStep;
    const epochW = String(epochs).length;
    const stepW = String(stepsPerEpoch).length;
    return (
      `${label.padEnd(8)} epoch ${String(epoch + 1).padStart(epochW)}/${epochs} ${bar} ` +
      `${String(done).padStart(stepW)}/${stepsPerEpoch}  ${this.partsText()}  ` +
      `ETA ${formatDuration(epochEta)} (run ${formatDuration(runEta)})`
    );
  }

  private partsText(): string {
    const m = this.means;
    const aux = this.cfg.showAuxiliary ? ` rec ${formatLoss(m.reconstruction)} con ${formatLoss(m.contrastive)}` : '';
    return `loss ${formatLoss(m.loss)} (asl ${formatLoss(m.asl)}${aux})`;
  }

  private draw(epoch: number): void {
    let line = this.barLine(epoch);
    const cols = this.cfg.stream.columns;
    if (cols && cols > 20 && line.length > cols - 1) line = line.slice(0, cols - 1);
    this.cfg.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  /**
   * Closes the epoch: the bar is completed with the validation mAP and left on its own line
   * ('bar'), or one summary line is printed ('lines'). Returns the epoch's means.
   */
  endEpoch(epoch: number, valMAP: number | null): EpochSummary {
    const summary: EpochSummary = { epoch, ...this.means, valMAP, timeMs: performance.now() - this.epochStart };
    const val = valMAP === null ? '' : `  val mAP ${(100 * valMAP).toFixed(2)}`;
    if (this.cfg.mode === 'bar') {
      if (!this.drawn || this.epochSteps > 0) this.draw(epoch);
      this.cfg.stream.write(`${val}  ${formatDuration(summary.timeMs)}\n`);
    } else if (this.cfg.mode === 'lines') {
      const w = String(this.cfg.epochs).length;
      this.cfg.stream.write(
        `${this.cfg.label.padEnd(8)} epoch ${String(epoch + 1).padStart(w)}/${this.cfg.epochs}  ${this.partsText()}${val}  ` +
          `${(summary.timeMs / 1000).toFixed(1)}s\n`,
      );
    }
    this.epochSteps = 0;
    this.sums = { loss: 0, asl: 0, reconstruction: 0, contrastive: 0 };
    this.drawn = false;
    return summary;
  }
}
