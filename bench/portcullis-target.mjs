// Runs Portcullis (the built dist/) from a config file, in its own process.

import pino from 'pino';
import { startFromFile } from '../dist/index.js';

const proxy = await startFromFile(process.argv[2], { logger: pino({ level: 'error' }) });
process.stdout.write(`ready ${proxy.listenerAddress('inbound').port}\n`);
process.on('SIGTERM', async () => {
  await proxy.close();
  process.exit(0);
});
