'use strict';
// Preloaded into `hexo generate` by tests/hexo_site.py (node --require): a site build needs no
// network at all, so every socket connect and every name lookup is refused and written to the file
// named by MIRROR_HEXO_OFFLINE_LOG, which the harness turns into a failed build. Loopback is refused
// too: a build that talks to anything is a build whose output the tests cannot trust.
const dgram = require('node:dgram');
const dns = require('node:dns');
const fs = require('node:fs');
const net = require('node:net');

const log = process.env.MIRROR_HEXO_OFFLINE_LOG;

function refuse(what) {
  if (log) fs.appendFileSync(log, `${what}\n`);
  throw new Error(`offline guard: hexo tried ${what}`);
}

function describe(args) {
  // net.connect() hands Socket#connect its arguments already normalized into one array.
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  if (first !== null && typeof first === 'object') {
    return JSON.stringify({ host: first.host, port: first.port, path: first.path });
  }
  return JSON.stringify(args.filter((arg) => typeof arg !== 'function'));
}

net.Socket.prototype.connect = function connect(...args) {
  refuse(`connect ${describe(args)}`);
};

dgram.Socket.prototype.send = function send(...args) {
  refuse(`udp send ${describe(args.slice(1))}`);
};

const lookups = ['lookup', 'lookupService', 'resolve', 'resolve4', 'resolve6', 'resolveAny',
  'resolveCname', 'resolveMx', 'resolveNs', 'resolveTxt', 'resolveSrv', 'resolvePtr',
  'resolveNaptr', 'resolveSoa', 'reverse'];
const callbacks = [dns, dns.Resolver.prototype];
const promises = [dns.promises, dns.promises.Resolver.prototype];
for (const target of [...callbacks, ...promises]) {
  for (const name of lookups) {
    if (typeof target[name] !== 'function') continue;
    target[name] = promises.includes(target)
      ? async function blocked(...args) {
        refuse(`dns ${name} ${describe(args)}`);
      }
      : function blocked(...args) {
        refuse(`dns ${name} ${describe(args)}`);
      };
  }
}
