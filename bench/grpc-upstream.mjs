// A gRPC service for the benchmark (@grpc/grpc-js, h2c, one unary byte-echo method), in its own
// process. Prints "ready PORT".
import * as grpc from '@grpc/grpc-js';

const id = (b) => b;
const server = new grpc.Server();
server.addService(
  {
    Echo: {
      path: '/bench.Echo/Echo',
      requestStream: false,
      responseStream: false,
      requestSerialize: id,
      requestDeserialize: id,
      responseSerialize: id,
      responseDeserialize: id,
    },
  },
  { Echo: (call, cb) => cb(null, call.request) },
);
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`ready ${port}\n`);
});
process.on('SIGTERM', () => server.forceShutdown());
