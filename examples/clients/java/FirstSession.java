// A first session from Java with aXMLRPC (Debian: libaxmlrpc-java): a CPU pool, a VM started in
// it, a VM group, a scheduling domain, an error, events.
//
//     java -cp /usr/share/java/axmlrpc.jar FirstSession.java http://127.0.0.1:9363/ [CPU]
//
// CPU (default 7) is the pCPU taken from Pool-0 for the new pool. Every name starts with "java-".
// aXMLRPC refuses a bare <value>text</value>: the server sends every string as <string>.

import de.timroes.axmlrpc.XMLRPCClient;
import java.net.URL;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

public class FirstSession {
    /** A Failure reply: ErrorDescription is the code and its parameters. */
    static class XenAPIException extends Exception {
        final String[] description;

        XenAPIException(Object[] description) {
            super(String.join(" ", asStrings(description)));
            this.description = asStrings(description);
        }
    }

    static String[] asStrings(Object[] values) {
        String[] out = new String[values.length];
        for (int i = 0; i < values.length; i++) {
            out[i] = String.valueOf(values[i]);
        }
        return out;
    }

    private final XMLRPCClient client;
    private String session;

    FirstSession(String url) throws Exception {
        client = new XMLRPCClient(new URL(url));
    }

    /** method(session, params...), the Xen-API envelope {Status, Value | ErrorDescription} unwrapped. */
    Object call(String method, Object... params) throws Exception {
        Object[] args = params;
        if (session != null) {
            args = new Object[params.length + 1];
            args[0] = session;
            System.arraycopy(params, 0, args, 1, params.length);
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> reply = (Map<String, Object>) client.call(method, args);
        if (!"Success".equals(reply.get("Status"))) {
            throw new XenAPIException((Object[]) reply.get("ErrorDescription"));
        }
        return reply.get("Value");
    }

    @SuppressWarnings("unchecked")
    Map<String, Object> map(Object value) {
        return (Map<String, Object>) value;
    }

    Map<String, Object> record(String cls, Object ref) throws Exception {
        return map(call(cls + ".get_record", ref));
    }

    Object vm(String name) throws Exception {
        return call("VM.create", Map.of("name_label", name, "memory_static_max", "268435456", "VCPUs_max", "1",
                                        "pool_name", "java-pool"));
    }

    void run(String cpu) throws Exception {
        session = (String) call("session.login_with_password", "root", "", "1.0", "java-example");
        System.out.println("session: " + session);
        try {
            // A pool of one pCPU, taken from Pool-0 (which holds every pCPU at boot), then activated.
            Object pool0 = ((Object[]) call("cpu_pool.get_by_name_label", "Pool-0"))[0];
            for (String ref : map(call("host_cpu.get_all_records_where", "field \"number\"=\"" + cpu + "\"")).keySet()) {
                call("cpu_pool.remove_host_CPU_live", pool0, ref);
            }
            Object pool = call("cpu_pool.create", Map.of("name_label", "java-pool", "proposed_CPUs", new Object[] {cpu}));
            call("cpu_pool.activate", pool);
            System.out.println("cpu_pool java-pool: activated " + record("cpu_pool", pool).get("activated")
                               + " on CPU " + cpu);

            // Watch VMs from now on: event.from with an empty token gives the current token.
            Object token = map(call("event.from", new Object[] {"VM"}, "", 0.0)).get("token");

            Object web = vm("java-vm");
            call("VM.start", web, false, false);
            Map<String, Object> webRecord = record("VM", web);
            System.out.println("VM java-vm: " + webRecord.get("power_state") + " in " + webRecord.get("pool_name"));

            Object db = vm("java-vm2");
            Object group = call("VM_group.create", Map.of("name_label", "java-group"));
            call("VM_group.add_VM", group, db);
            call("VM_group.start", group, false);
            System.out.println("VM_group java-group: started, java-vm2 " + record("VM", db).get("power_state"));

            Object sd = call("sched_domain.create", Map.of("name_label", "java-sd", "master", web,
                                                           "members", new Object[] {db}));
            Map<String, Object> sdRecord = record("sched_domain", sd);
            System.out.println("sched_domain java-sd: master " + record("VM", sdRecord.get("master")).get("name_label")
                               + ", " + ((Object[]) sdRecord.get("members")).length + " member(s)");

            // An error, handled: starting a running VM is VM_BAD_POWER_STATE [vm, expected, actual].
            try {
                call("VM.start", web, false, false);
            } catch (XenAPIException e) {
                if (!e.description[0].equals("VM_BAD_POWER_STATE")) {
                    throw e;
                }
                System.out.println("error handled: " + e.description[0] + " (java-vm is " + e.description[3]
                                   + ", not " + e.description[2] + ")");
            }

            Map<String, Object> answer = map(call("event.from", new Object[] {"VM"}, token, 1.0));
            List<String> seen = new ArrayList<>();
            for (Object e : (Object[]) answer.get("events")) {
                Map<String, Object> event = map(e);
                Map<String, Object> snapshot = map(event.get("snapshot"));
                seen.add(event.get("operation") + " " + snapshot.get("name_label") + " " + snapshot.get("power_state"));
            }
            System.out.println("events: " + String.join("; ", seen));
        } finally {
            call("session.logout");
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args.length > 0 ? args[0] : "http://127.0.0.1:9363/";
        new FirstSession(url).run(args.length > 1 ? args[1] : "7");
    }
}
