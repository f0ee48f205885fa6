// Startup: from spawning `portcullis run` to its /readyz answering 200 (listeners up, SVID loaded,
// policies compiled, JWKS fetched) — how long a sidecar holds up its pod's start.
import { spawn } from 'node:child_process';
import http from 'node:http';

function readyz(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/readyz', agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(0));
  });
}

/** One start: ms from spawn to /readyz 200 (the admin port is read from the log, on stderr). */
async function once(args) {
  const t0 = performance.now();
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    const adminPort = await new Promise((resolve, reject) => {
      let out = '';
      child.stderr.on('data', (d) => {
        out += d;
        const m = /"address":"[^"]*:(\d+)","msg":"admin listening"/.exec(out);
        if (m !== null) resolve(Number(m[1]));
      });
      child.on('exit', (code) =>
        reject(new Error(`portcullis exited with ${code} before its admin server listened`)),
      );
    });
    while ((await readyz(adminPort)) !== 200) await new Promise((r) => setTimeout(r, 2));
    return performance.now() - t0;
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
  }
}

/** `runs` starts of `node ...args`; their median, min and max in ms. */
export async function startupTimes(args, runs) {
  const times = [];
  for (let i = 0; i < runs; i++) times.push(await once(args));
  times.sort((a, b) => a - b);
  return {
    median: Math.round(times[Math.floor(times.length / 2)]),
    min: Math.round(times[0]),
    max: Math.round(times[times.length - 1]),
    runs,
  };
}
