// What a process costs, read from /proc (Linux): CPU time (user + system, every thread) and
// resident memory. The fixed-rate benchmark samples each target's process before and after a run
// and divides CPU seconds by wall seconds: the vCPU the target used to serve that rate.
import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100; // USER_HZ: the unit of utime/stime in /proc/<pid>/stat on Linux

/** utime + stime from a /proc stat line (fields 14 and 15; the name in parentheses may hold spaces). */
function ticksOf(statLine) {
  const rest = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

/** CPU seconds a process has used so far, or null where /proc is not there (not Linux, or it ended). */
export function cpuSeconds(pid) {
  try {
    return ticksOf(readFileSync(`/proc/${pid}/stat`, 'utf8')) / TICKS_PER_SECOND;
  } catch {
    return null;
  }
}

/** CPU seconds per thread, keyed by thread id with its name: where a process spends its time. */
export function threadSeconds(pid) {
  const out = new Map();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      out.set(tid, { name, seconds: ticksOf(stat) / TICKS_PER_SECOND });
    }
  } catch {
    // the process ended
  }
  return out;
}

/** A process and its descendants (a cluster primary and its workers), by reading /proc. */
export function processTree(pid) {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const tid of readdirSync(`/proc/${out[i]}/task`)) {
        const kids = readFileSync(`/proc/${out[i]}/task/${tid}/children`, 'utf8').trim();
        if (kids !== '') out.push(...kids.split(' ').map(Number));
      }
    } catch {
      // ended meanwhile
    }
  }
  return out;
}

/**
 * Resident set size now and at its peak, and the proportional set size (pages shared with other
 * processes — the node executable's, between cluster workers — divided among them), in MiB.
 */
export function memoryMiB(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (text, field) =>
      Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? Number.NaN);
    let pss = Number.NaN;
    try {
      pss = kb(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'), 'Pss') / 1024;
    } catch {
      // no smaps_rollup (old kernel)
    }
    return { rss: kb(status, 'VmRSS') / 1024, peak: kb(status, 'VmHWM') / 1024, pss };
  } catch {
    return null;
  }
}

/**
 * Runs `load()` and reports what the processes in `roots` and their descendants used meanwhile:
 * vCPU (CPU seconds per wall second, summed over the processes) and RSS at the end (summed too:
 * pages shared between processes count once per process). `perThread` adds the split by thread.
 */
export async function measure(roots, load, { perThread = false } = {}) {
  const pids = roots.flatMap(processTree);
  const before = pids.map(cpuSeconds);
  const threadsBefore = perThread ? pids.map(threadSeconds) : [];
  const start = process.hrtime.bigint();
  const result = await load();
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  const after = pids.map(cpuSeconds);
  if (before.some((x) => x === null) || after.some((x) => x === null)) {
    return { result, vcpu: null, rssMiB: null, pssMiB: null, threads: null };
  }
  const vcpu = after.reduce((a, x, i) => a + (x - before[i]), 0) / wall;
  const rssMiB = pids.reduce((a, pid) => a + (memoryMiB(pid)?.rss ?? 0), 0);
  const pssMiB = pids.reduce((a, pid) => a + (memoryMiB(pid)?.pss ?? 0), 0);
  let threads = null;
  if (perThread) {
    threads = [];
    pids.forEach((pid, i) => {
      for (const [tid, t] of threadSeconds(pid)) {
        const was = threadsBefore[i].get(tid)?.seconds ?? 0;
        const used = (t.seconds - was) / wall;
        if (used > 0) threads.push({ pid, tid, name: t.name, vcpu: used });
      }
    });
    threads.sort((a, b) => b.vcpu - a.vcpu);
  }
  return { result, vcpu, rssMiB, pssMiB, threads };
}
