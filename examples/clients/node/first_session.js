#!/usr/bin/env node
// A first session from Node with npm's xmlrpc (npm ci here installs it): a CPU pool, a VM
// started in it, a VM group, a scheduling domain, an error, events.
//
//     node first_session.js http://127.0.0.1:9363/ [CPU]
//
// CPU (default 7) is the pCPU taken from Pool-0 for the new pool. Every name starts with "node-".
"use strict";

const xmlrpc = require("xmlrpc");

class XenAPIError extends Error {
  constructor(description) {
    super(description.join(" "));
    this.description = description; // [code, params...]
  }
}

// A Xen-API session: call() sends the session first and unwraps {Status, Value | ErrorDescription}.
class Session {
  constructor(url) {
    const options = new URL(url);
    const secure = options.protocol === "https:";
    this.client = (secure ? xmlrpc.createSecureClient : xmlrpc.createClient)({
      host: options.hostname, port: options.port || (secure ? 443 : 80), path: options.pathname,
    });
    this.ref = null;
  }

  call(method, ...params) {
    const args = this.ref ? [this.ref, ...params] : params;
    return new Promise((resolve, reject) => {
      this.client.methodCall(method, args, (err, reply) => {
        if (err) reject(err);
        else if (reply.Status !== "Success") reject(new XenAPIError(reply.ErrorDescription));
        else resolve(reply.Value);
      });
    });
  }

  record(cls, ref) { return this.call(`${cls}.get_record`, ref); }
}

async function main() {
  const url = process.argv[2] || "http://127.0.0.1:9363/";
  const cpu = process.argv[3] || "7";
  const x = new Session(url);
  x.ref = await x.call("session.login_with_password", "root", "", "1.0", "node-example");
  console.log(`session: ${x.ref}`);
  try {
    // A pool of one pCPU, taken from Pool-0 (which holds every pCPU at boot), then activated.
    const [pool0] = await x.call("cpu_pool.get_by_name_label", "Pool-0");
    for (const ref of Object.keys(await x.call("host_cpu.get_all_records_where", `field "number"="${cpu}"`))) {
      await x.call("cpu_pool.remove_host_CPU_live", pool0, ref);
    }
    const pool = await x.call("cpu_pool.create", { name_label: "node-pool", proposed_CPUs: [cpu] });
    await x.call("cpu_pool.activate", pool);
    console.log(`cpu_pool node-pool: activated ${(await x.record("cpu_pool", pool)).activated} on CPU ${cpu}`);

    // Watch VMs from now on: event.from with an empty token gives the current token.
    const { token } = await x.call("event.from", ["VM"], "", 0.0);

    const vm = (name) => x.call("VM.create", {
      name_label: name, memory_static_max: "268435456", VCPUs_max: "1", pool_name: "node-pool",
    });
    const web = await vm("node-vm");
    await x.call("VM.start", web, false, false);
    const webRecord = await x.record("VM", web);
    console.log(`VM node-vm: ${webRecord.power_state} in ${webRecord.pool_name}`);

    const db = await vm("node-vm2");
    const group = await x.call("VM_group.create", { name_label: "node-group" });
    await x.call("VM_group.add_VM", group, db);
    await x.call("VM_group.start", group, false);
    console.log(`VM_group node-group: started, node-vm2 ${(await x.record("VM", db)).power_state}`);

    const sd = await x.call("sched_domain.create", { name_label: "node-sd", master: web, members: [db] });
    const sdRecord = await x.record("sched_domain", sd);
    const master = await x.record("VM", sdRecord.master);
    console.log(`sched_domain node-sd: master ${master.name_label}, ${sdRecord.members.length} member(s)`);

    // An error, handled: starting a running VM is VM_BAD_POWER_STATE [vm, expected, actual].
    try {
      await x.call("VM.start", web, false, false);
    } catch (err) {
      if (!(err instanceof XenAPIError) || err.description[0] !== "VM_BAD_POWER_STATE") throw err;
      const [code, , expected, actual] = err.description;
      console.log(`error handled: ${code} (node-vm is ${actual}, not ${expected})`);
    }

    const answer = await x.call("event.from", ["VM"], token, 1.0);
    const seen = answer.events.map((e) => `${e.operation} ${e.snapshot.name_label} ${e.snapshot.power_state}`);
    console.log(`events: ${seen.join("; ")}`);
  } finally {
    await x.call("session.logout");
  }
}

main().catch((err) => {
  console.error(err.message || err);
  process.exit(1);
});
