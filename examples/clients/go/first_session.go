// A first session from Go with Debian's kolo/xmlrpc (golang-github-kolo-xmlrpc-dev):
// a CPU pool, a VM started in it, a VM group, a scheduling domain, an error, events.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run first_session.go http://127.0.0.1:9363/ [CPU]
//
// CPU (default 7) is the pCPU taken from Pool-0 for the new pool. Every name starts with "go-".
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/kolo/xmlrpc"
)

// XenAPIError is a Failure reply: ErrorDescription is the code and its parameters.
type XenAPIError struct{ Description []string }

func (e *XenAPIError) Error() string { return strings.Join(e.Description, " ") }

type Session struct {
	client *xmlrpc.Client
	ref    string
}

// call sends method(params...) and unwraps the Xen-API envelope {Status, Value | ErrorDescription}.
func (s *Session) call(method string, params ...any) (any, error) {
	if s.ref != "" {
		params = append([]any{s.ref}, params...)
	}
	var reply map[string]any
	if err := s.client.Call(method, params, &reply); err != nil {
		return nil, err
	}
	if reply["Status"] != "Success" {
		description := []string{}
		for _, p := range reply["ErrorDescription"].([]any) {
			description = append(description, p.(string))
		}
		return nil, &XenAPIError{description}
	}
	return reply["Value"], nil
}

// must is call for the steps that are expected to succeed.
func (s *Session) must(method string, params ...any) any {
	value, err := s.call(method, params...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", method, err)
		os.Exit(1)
	}
	return value
}

func (s *Session) str(method string, params ...any) string { return s.must(method, params...).(string) }

func (s *Session) record(class, ref string) map[string]any {
	return s.must(class+".get_record", ref).(map[string]any)
}

func main() {
	url, cpu := "http://127.0.0.1:9363/", "7"
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	if len(os.Args) > 2 {
		cpu = os.Args[2]
	}
	client, err := xmlrpc.NewClient(url, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	x := &Session{client: client}
	x.ref = x.str("session.login_with_password", "root", "", "1.0", "go-example")
	defer x.call("session.logout")
	fmt.Println("session:", x.ref)

	// A pool of one pCPU, taken from Pool-0 (which holds every pCPU at boot), then activated.
	pool0 := x.must("cpu_pool.get_by_name_label", "Pool-0").([]any)[0].(string)
	for ref := range x.must("host_cpu.get_all_records_where", `field "number"="`+cpu+`"`).(map[string]any) {
		x.must("cpu_pool.remove_host_CPU_live", pool0, ref)
	}
	pool := x.str("cpu_pool.create", map[string]any{"name_label": "go-pool", "proposed_CPUs": []any{cpu}})
	x.must("cpu_pool.activate", pool)
	fmt.Printf("cpu_pool go-pool: activated %v on CPU %s\n", x.record("cpu_pool", pool)["activated"], cpu)

	// Watch VMs from now on: event.from with an empty token gives the current token.
	token := x.must("event.from", []any{"VM"}, "", 0.0).(map[string]any)["token"].(string)

	vm := func(name string) string {
		return x.str("VM.create", map[string]any{"name_label": name, "memory_static_max": "268435456",
			"VCPUs_max": "1", "pool_name": "go-pool"})
	}
	web := vm("go-vm")
	x.must("VM.start", web, false, false)
	fmt.Printf("VM go-vm: %s in %s\n", x.record("VM", web)["power_state"], x.record("VM", web)["pool_name"])

	db := vm("go-vm2")
	group := x.str("VM_group.create", map[string]any{"name_label": "go-group"})
	x.must("VM_group.add_VM", group, db)
	x.must("VM_group.start", group, false)
	fmt.Printf("VM_group go-group: started, go-vm2 %s\n", x.record("VM", db)["power_state"])

	sd := x.str("sched_domain.create", map[string]any{"name_label": "go-sd", "master": web, "members": []any{db}})
	fmt.Printf("sched_domain go-sd: master %s, %d member(s)\n",
		x.record("VM", x.record("sched_domain", sd)["master"].(string))["name_label"],
		len(x.record("sched_domain", sd)["members"].([]any)))

	// An error, handled: starting a running VM is VM_BAD_POWER_STATE [vm, expected, actual].
	if _, err := x.call("VM.start", web, false, false); err != nil {
		if e, ok := err.(*XenAPIError); ok && e.Description[0] == "VM_BAD_POWER_STATE" {
			fmt.Printf("error handled: %s (go-vm is %s, not %s)\n", e.Description[0], e.Description[3], e.Description[2])
		} else {
			fmt.Fprintln(os.Stderr, "unexpected:", err)
			os.Exit(1)
		}
	}

	answer := x.must("event.from", []any{"VM"}, token, 1.0).(map[string]any)
	seen := []string{}
	for _, e := range answer["events"].([]any) {
		event := e.(map[string]any)
		snapshot := event["snapshot"].(map[string]any)
		seen = append(seen, fmt.Sprintf("%s %s %s", event["operation"], snapshot["name_label"], snapshot["power_state"]))
	}
	fmt.Println("events:", strings.Join(seen, "; "))
}
