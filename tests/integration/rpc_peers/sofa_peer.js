'use strict';
// Real RPC peers for Baton's tests, from sofa-rpc-node (SOFARPC's Node.js implementation):
// Bolt by default (sofa-bolt-node), Dubbo with the dubbo-remoting protocol.
//
//   node sofa_peer.js server bolt|dubbo PORT NAME
//       serves com.example.HelloService (version 1.0): hello(who) -> "NAME:hello:who",
//       sleep(ms) -> "NAME:slept:ms" after ms milliseconds; prints "ready PORT"
//   node sofa_peer.js client bolt|dubbo HOST:PORT CALLS [METHOD] [ARG] [TIMEOUT_MS]
//       makes CALLS concurrent calls on one connection; prints one JSON line per call,
//       {"i": n, "result": ...} or {"i": n, "error": message}, then exits 0
const { RpcServer } = require('sofa-rpc-node').server;
const { RpcClient } = require('sofa-rpc-node').client;

const quiet = { info() {}, warn() {}, debug() {}, error() {} };

function protocolOf(name) {
  if (name === 'dubbo') return require('dubbo-remoting');
  if (name === 'bolt') return require('sofa-bolt-node');
  throw new Error('unknown protocol ' + name);
}

async function server(protocol, port, name) {
  const server = new RpcServer({ logger: quiet, port: Number(port), protocol: protocolOf(protocol) });
  server.addService({ interfaceName: 'com.example.HelloService', version: '1.0' }, {
    async hello(who) { return name + ':hello:' + who; },
    async sleep(ms) {
      await new Promise(resolve => setTimeout(resolve, Number(ms)));
      return name + ':slept:' + ms;
    },
  });
  await server.start();
  process.stdout.write('ready ' + server.options.port + '\n');
}

async function client(protocol, address, calls, method = 'hello', arg = 'world', timeout = '3000') {
  const client = new RpcClient({ logger: quiet, protocol: protocolOf(protocol) });
  const consumer = client.createConsumer({
    interfaceName: 'com.example.HelloService', version: '1.0', serverHost: address,
  });
  await consumer.ready();
  const jobs = [];
  for (let i = 0; i < Number(calls); i++) {
    const value = method === 'sleep' ? Number(arg) : arg + i;
    jobs.push(consumer.invoke(method, [ value ], { responseTimeout: Number(timeout) })
      .then(result => ({ i, result }), err => ({ i, error: String(err && err.message) })));
  }
  for (const line of await Promise.all(jobs)) {
    process.stdout.write(JSON.stringify(line) + '\n');
  }
  // No client.close(): it waits seconds for nothing the tests look at; exiting closes the socket.
  process.exit(0);
}

const [ role, ...args ] = process.argv.slice(2);
(role === 'server' ? server : client)(...args).catch(err => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
