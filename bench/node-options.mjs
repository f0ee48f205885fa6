// The V8 flags Portcullis runs with in its image (the Dockerfile's PORTCULLIS_NODE_OPTIONS): the
// benchmark starts every Portcullis target with the same ones, so its CPU, memory and startup
// figures are those of the shipped configuration.
import { readFileSync } from 'node:fs';

const dockerfile = readFileSync(new URL('../Dockerfile', import.meta.url), 'utf8');
const m = /^ARG PORTCULLIS_NODE_OPTIONS="([^"]*)"$/m.exec(dockerfile);
if (m === null) throw new Error('Dockerfile: no ARG PORTCULLIS_NODE_OPTIONS="…" line');

/** The flags, one per element. */
export const nodeOptions = m[1].split(/\s+/).filter((f) => f !== '');
