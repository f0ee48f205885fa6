import { existsSync, type FSWatcher, statSync, watch } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';

/**
 * Watches the folders that hold the given files and calls `onChange` once things settle.
 * Folders, not files: tools replace a file by rename and Kubernetes swaps a `..data` symlink, after
 * which a watch on the old file never fires again. Events are debounced because one rotation is
 * several writes (cert, then key) and a half-written pair must not be the one loaded.
 */
export class FolderWatcher {
  private readonly watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly onChange: () => void;
  private readonly debounceMs: number;

  constructor(paths: Iterable<string>, onChange: () => void, log: Logger, debounceMs = 250) {
    this.onChange = onChange;
    this.debounceMs = debounceMs;
    const folders = new Set<string>();
    for (const p of paths) {
      const isDir = existsSync(p) && statSync(p).isDirectory();
      folders.add(isDir ? p : dirname(p));
    }
    for (const folder of folders) {
      try {
        const w = watch(folder, { persistent: false }, () => this.schedule());
        w.on('error', (err) =>
          log.warn({ folder, err: err.message }, 'file watch failed; use SIGHUP to reload'),
        );
        this.watchers.push(w);
      } catch (err) {
        log.warn({ folder, err: (err as Error).message }, 'cannot watch folder; use SIGHUP to reload');
      }
    }
  }

  private schedule(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.onChange();
    }, this.debounceMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
    this.watchers.length = 0;
  }
}
