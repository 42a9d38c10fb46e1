'use strict';
// hessian.js (the maintained Hessian 2.0 implementation on npm) as a peer of Baton's reader:
// reads JSON lines from stdin, writes one line of hex per value, its Hessian 2.0 encoding.
// {"$class": "java.lang.Long", "$": n} and the like keep hessian.js' typed-value convention.
const hessian = require('hessian.js');
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean);
const out = lines.map(line => hessian.encode(JSON.parse(line), '2.0').toString('hex'));
process.stdout.write(out.join('\n') + '\n');
