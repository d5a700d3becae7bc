/*
 * The test guest of the real-Xen stage: the smallest 64-bit PV kernel that acts, towards the
 * toolstack, as a guest with PV drivers does. It answers Xen's control requests - poweroff, halt,
 * reboot and suspend, which `xl shutdown`, `xl reboot` and `xl save` make through the domain's
 * control/shutdown node in xenstore - and between them sleeps in Xen, using no CPU.
 *
 * Why not Linux: under QEMU's emulation dom0 needs about 8 s to unpack and load a Linux kernel
 * at every `xl create`, and the guest then boots for seconds of emulated CPU. This one is created
 * in half a second and is ready at once, so the shared test suite can start guests by the dozen.
 * Like Linux, it brings up and takes down its vCPUs as the toolstack makes them available
 * (`xl vcpu-set` writes cpu/N/availability); the others only sleep. What it does not do is balloon
 * (xl reports memory targets, not what a guest gave back).
 *
 * With the word `burn` on its command line (xl's `extra`, the VM's PV_args) it is a busy guest
 * instead: every online vCPU spins rather than sleeping in Xen (vCPU 0 polls its rings for
 * requests, so it still answers them), using all the CPU the scheduler gives it. The real-Xen
 * stage measures weights, caps and scheduling domains with it in Xen's own CPU accounting.
 *
 * Everything here is Xen's public PV ABI (xen/include/public): start_info, shared_info, the
 * xenstore and console rings, and five hypercalls. Entry and ELF notes are in tiny-guest.s.
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned short u16;
typedef u64 u16_pad; /* a selector: 16 bits in an 8-byte slot */

#define PAGE_SIZE 4096UL
#define PAGE_SHIFT 12
#define P2M_PER_PAGE (PAGE_SIZE / sizeof(u64))

/* ---- hypercalls: a 64-bit PV kernel makes them with `syscall`, as Xen's hypercall page does */
#define HYPERVISOR_update_va_mapping 14
#define HYPERVISOR_vcpu_op 24
#define HYPERVISOR_sched_op 29
#define HYPERVISOR_event_channel_op 32
#define SCHEDOP_shutdown 2
#define SCHEDOP_poll 3
#define SHUTDOWN_poweroff 0
#define SHUTDOWN_reboot 1
#define SHUTDOWN_suspend 2
#define EVTCHNOP_send 4
#define UVMF_INVLPG 2
#define VCPUOP_initialise 0
#define VCPUOP_up 1
#define VCPUOP_down 2
#define MAX_VCPUS 32

static long hypercall3(long nr, long a1, long a2, long a3)
{
    long ret;
    asm volatile("syscall"
                 : "=a"(ret), "+D"(a1), "+S"(a2), "+d"(a3)
                 : "0"(nr)
                 : "rcx", "r8", "r9", "r10", "r11", "memory");
    return ret;
}

/* ---- the ABI's structures (x86_64) */
struct start_info {
    char magic[32];
    u64 nr_pages;
    u64 shared_info; /* machine address */
    u32 flags;
    u64 store_mfn;
    u32 store_evtchn;
    struct {
        u64 mfn;
        u32 evtchn;
    } console;
    u64 pt_base, nr_pt_frames, mfn_list, mod_start, mod_len;
    char cmd_line[1024];
};

struct vcpu_info {
    u8 upcall_pending, upcall_mask;
    u64 pending_sel;
    u64 cr2, pad;
    u8 time[32];
};

struct shared_info {
    struct vcpu_info vcpu_info[32];
    u64 evtchn_pending[64];
    u64 evtchn_mask[64];
    u32 wc_version, wc_sec, wc_nsec, wc_sec_hi;
    /* where a PV guest publishes its pfn-to-mfn table, which `xl save` reads */
    u64 max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation;
};
_Static_assert(sizeof(struct vcpu_info) == 64, "vcpu_info is 64 bytes");
_Static_assert(__builtin_offsetof(struct shared_info, max_pfn) == 3088, "arch_shared_info at 3088");

struct cpu_user_regs {
    u64 r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi;
    u32 error_code, entry_vector;
    u64 rip;
    u16_pad cs;
    u64 rflags, rsp;
    u16_pad ss, es, ds, fs, gs;
};

/* what VCPUOP_initialise starts a vCPU with */
struct vcpu_guest_context {
    u8 fpu[512];
    u64 flags;
    struct cpu_user_regs user_regs;
    struct {
        u8 vector, flags;
        u16 cs;
        u64 address;
    } trap_ctxt[256];
    u64 ldt_base, ldt_ents, gdt_frames[16], gdt_ents, kernel_ss, kernel_sp, ctrlreg[8], debugreg[8];
    u64 event_callback_eip, failsafe_callback_eip, syscall_callback_eip, vm_assist;
    u64 fs_base, gs_base_kernel, gs_base_user;
};
_Static_assert(__builtin_offsetof(struct vcpu_guest_context, trap_ctxt) == 720, "trap_ctxt at 720");
_Static_assert(sizeof(struct vcpu_guest_context) == 5168, "vcpu_guest_context is 5168 bytes");
#define VGCF_in_kernel (1 << 2)
#define FLAT_KERNEL_CS64 0xe033
#define FLAT_KERNEL_SS64 0xe02b

struct xenstore_ring {
    char req[1024], rsp[1024];
    volatile u32 req_cons, req_prod, rsp_cons, rsp_prod;
};

struct console_ring {
    char in[1024], out[2048];
    volatile u32 in_cons, in_prod, out_cons, out_prod;
};

struct xs_header {
    u32 type, req_id, tx_id, len;
};
#define XS_DIRECTORY 1
#define XS_READ 2
#define XS_WATCH 4
#define XS_WRITE 11
#define XS_WATCH_EVENT 15
#define XS_ERROR 16

/* Xen's read-only machine-to-physical table, at the start of the hypervisor's hole */
#define M2P ((const volatile u64 *)0xFFFF800000000000UL)

/* ---- our state */
static struct start_info *si;
static struct shared_info *shared;
static struct xenstore_ring *store;
static struct console_ring *console;
static u64 *p2m;
static u32 req_id;
static int watch_fired;
static u8 vcpu_started[MAX_VCPUS]; /* initialised once; then only up and down */
static struct vcpu_guest_context vcpu_context;
int burning; /* `burn` on the command line: spin instead of sleeping (read by secondary_start too) */

static u8 shared_page[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));
static u64 frame_list[P2M_PER_PAGE] __attribute__((aligned(PAGE_SIZE)));
static u64 frame_list_list[P2M_PER_PAGE] __attribute__((aligned(PAGE_SIZE)));

/* gcc may call these even in a freestanding build */
void *memset(void *d, int c, unsigned long n)
{
    for (u8 *p = d; n--;)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
    u8 *o = d;
    for (const u8 *i = s; n--;)
        *o++ = *i++;
    return d;
}

static unsigned long length(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static int same(const char *a, unsigned long n, const char *b)
{
    if (n != length(b))
        return 0;
    while (n--)
        if (a[n] != b[n])
            return 0;
    return 1;
}

static void barrier(void)
{
    asm volatile("mfence" ::: "memory");
}

/* We are linked at virtual address 0 (VIRT_BASE) over our pseudo-physical frames: va = pfn << 12. */
static u64 virt_to_mfn(const void *va)
{
    return p2m[(u64)va >> PAGE_SHIFT];
}

static void *mfn_to_virt(u64 mfn)
{
    return (void *)(M2P[mfn] << PAGE_SHIFT);
}

static void notify(u32 port)
{
    u32 send = port;
    hypercall3(HYPERVISOR_event_channel_op, EVTCHNOP_send, (long)&send, 0);
}

/* Sleep until `port` is signalled. The pending bit is cleared first (and the caller looks at its
 * ring after that), so no notification is lost; upcalls stay masked, as the builder left them, so
 * no event handler is needed. */
static void clear_event(u32 port)
{
    __atomic_fetch_and(&shared->evtchn_pending[port / 64], ~(1UL << (port % 64)), __ATOMIC_SEQ_CST);
}

static void wait_event(u32 port)
{
    if (burning) { /* busy: the caller looks at its ring again at once */
        asm volatile("pause");
        return;
    }
    struct {
        u32 *ports;
        u32 nr_ports;
        u64 timeout;
    } poll = {&port, 1, 0};
    hypercall3(HYPERVISOR_sched_op, SCHEDOP_poll, (long)&poll, 0);
}

static void say(const char *text)
{
    for (unsigned long i = 0, n = length(text); i < n; i++) {
        while (console->out_prod - console->out_cons >= sizeof console->out)
            ; /* xenconsoled drains it; a few lines never fill it */
        console->out[console->out_prod & (sizeof console->out - 1)] = text[i];
        barrier();
        console->out_prod++;
    }
    notify(si->console.evtchn);
}

/* ---- vCPUs: all but vCPU 0 start down; a vCPU brought up sleeps (secondary_start in tiny-guest.s) */
extern char secondary_start[];

static void set_vcpu(u32 vcpu, int online)
{
    if (online && !vcpu_started[vcpu]) {
        struct vcpu_guest_context *c = &vcpu_context;
        memset(c, 0, sizeof *c);
        c->flags = VGCF_in_kernel;
        c->user_regs.rip = (u64)secondary_start;
        c->user_regs.cs = FLAT_KERNEL_CS64;
        c->user_regs.ss = FLAT_KERNEL_SS64;
        c->user_regs.rflags = 0x1000; /* IOPL 1, as Linux starts its vCPUs */
        c->kernel_ss = FLAT_KERNEL_SS64;
        c->ctrlreg[3] = virt_to_mfn((void *)si->pt_base) << PAGE_SHIFT; /* our page tables */
        if (hypercall3(HYPERVISOR_vcpu_op, VCPUOP_initialise, vcpu, (long)c) != 0)
            return;
        vcpu_started[vcpu] = 1;
    }
    if (vcpu_started[vcpu])
        hypercall3(HYPERVISOR_vcpu_op, online ? VCPUOP_up : VCPUOP_down, vcpu, 0);
}

/* ---- xenstore: requests on the shared ring, replies and watch events on the other */
static void store_write(const void *data, u32 n)
{
    const char *p = data;
    while (n) {
        clear_event(si->store_evtchn);
        u32 room = sizeof store->req - (store->req_prod - store->req_cons);
        if (!room) {
            wait_event(si->store_evtchn);
            continue;
        }
        for (; room && n; room--, n--) {
            store->req[store->req_prod & (sizeof store->req - 1)] = *p++;
            barrier();
            store->req_prod++;
        }
        notify(si->store_evtchn);
    }
}

static void store_read(void *data, u32 n)
{
    char *p = data;
    while (n) {
        clear_event(si->store_evtchn);
        if (store->rsp_prod == store->rsp_cons) {
            wait_event(si->store_evtchn);
            continue;
        }
        for (; n && store->rsp_prod != store->rsp_cons; n--) {
            barrier();
            char c = store->rsp[store->rsp_cons & (sizeof store->rsp - 1)];
            barrier();
            store->rsp_cons++;
            if (p)
                *p++ = c;
        }
        notify(si->store_evtchn);
    }
}

/* Is `word` one of the space-separated words of the command line? */
static int has_word(const char *line, const char *word)
{
    for (const char *p = line; *p;) {
        while (*p == ' ')
            p++;
        unsigned long n = 0;
        while (p[n] && p[n] != ' ')
            n++;
        if (n && same(p, n, word))
            return 1;
        p += n;
    }
    return 0;
}

/* Read one message; a watch event is noted (watch_fired) and its body dropped. */
static struct xs_header store_message(char *body, u32 room)
{
    struct xs_header h;
    store_read(&h, sizeof h);
    u32 keep = h.type == XS_WATCH_EVENT ? 0 : (h.len < room ? h.len : room);
    store_read(body, keep);
    store_read(0, h.len - keep);
    if (h.type == XS_WATCH_EVENT)
        watch_fired = 1;
    return h;
}

/* One request; returns the length of the reply (its first `room` bytes in `reply`), -1 on XS_ERROR. */
static long store_request(u32 type, const char *payload, u32 n, char *reply, u32 room)
{
    struct xs_header h = {type, ++req_id, 0, n};
    store_write(&h, sizeof h);
    store_write(payload, n);
    for (;;) {
        struct xs_header r = store_message(reply, room);
        if (r.type != XS_WATCH_EVENT && r.req_id == h.req_id)
            return r.type == XS_ERROR ? -1 : (long)r.len;
    }
}

static void watch_control(void)
{
    static const char shutdown[] = "control/shutdown\0tiny", cpus[] = "cpu\0tiny"; /* path, token */
    char reply[16];
    store_request(XS_WATCH, shutdown, sizeof shutdown, reply, sizeof reply);
    store_request(XS_WATCH, cpus, sizeof cpus, reply, sizeof reply);
}

/* cpu/N/availability says "online" or "offline" for each vCPU N the domain may have */
static void follow_vcpus(void)
{
    for (u32 vcpu = 1; vcpu < MAX_VCPUS; vcpu++) {
        char path[32] = "cpu/", value[16];
        u32 n = 4;
        if (vcpu >= 10)
            path[n++] = '0' + vcpu / 10;
        path[n++] = '0' + vcpu % 10;
        memcpy(path + n, "/availability", 14);
        long len = store_request(XS_READ, path, n + 14, value, sizeof value);
        if (len < 0)
            break; /* no such vCPU: the domain has no more */
        set_vcpu(vcpu, same(value, len, "online"));
    }
}

/* Clear control/shutdown: the toolstack takes that as the guest's acknowledgement. */
static void acknowledge(void)
{
    static const char path[] = "control/shutdown";
    char reply[16];
    store_request(XS_WRITE, path, sizeof path, reply, sizeof reply);
}

/* ---- set-up, after boot and after every resume */
static void attach(void)
{
    /* map shared_info over our page for it (its address is Xen's, outside our memory) */
    hypercall3(HYPERVISOR_update_va_mapping, (long)shared_page, (long)(si->shared_info | 0x63), UVMF_INVLPG);
    shared = (struct shared_info *)shared_page;
    p2m = (u64 *)si->mfn_list;
    /* publish the pfn-to-mfn table: list of the frames of (the list of the frames of) the p2m */
    u64 pages = (si->nr_pages + P2M_PER_PAGE - 1) / P2M_PER_PAGE;
    for (u64 i = 0; i < pages && i < P2M_PER_PAGE; i++)
        frame_list[i] = virt_to_mfn(p2m + i * P2M_PER_PAGE);
    frame_list_list[0] = virt_to_mfn(frame_list);
    shared->max_pfn = si->nr_pages;
    shared->pfn_to_mfn_frame_list_list = virt_to_mfn(frame_list_list);
    store = mfn_to_virt(si->store_mfn);
    console = mfn_to_virt(si->console.mfn);
}

static void suspend(void)
{
    u64 store_mfn = si->store_mfn, console_mfn = si->console.mfn;
    /* what the save expects of a PV guest: start_info's frames as pfns, shared_info unmapped */
    si->store_mfn = M2P[store_mfn];
    si->console.mfn = M2P[console_mfn];
    hypercall3(HYPERVISOR_update_va_mapping, (long)shared_page, 0, UVMF_INVLPG);
    u32 reason = SHUTDOWN_suspend;
    long cancelled = hypercall3(HYPERVISOR_sched_op, SCHEDOP_shutdown, (long)&reason, (long)virt_to_mfn(si));
    if (cancelled) { /* the save failed: we go on in the same domain */
        si->store_mfn = store_mfn;
        si->console.mfn = console_mfn;
        attach();
        say("xend-ext tiny guest: suspend cancelled\r\n");
        return;
    }
    /* restored, perhaps on another host: new frames and event channels (in start_info), and a new
     * xenstore connection, where our watch does not exist */
    attach();
    store->rsp_cons = store->rsp_prod; /* replies meant for the old connection */
    watch_control();
    say("xend-ext tiny guest: resumed\r\n");
}

void main(struct start_info *start)
{
    si = start;
    si->cmd_line[sizeof si->cmd_line - 1] = 0;
    burning = has_word(si->cmd_line, "burn");
    p2m = (u64 *)si->mfn_list;
    attach();
    say(burning ? "xend-ext tiny guest: up, burning CPU\r\n" : "xend-ext tiny guest: up\r\n");
    watch_control(); /* a watch fires once when set: a request made before we got here is seen */
    char value[32];
    for (;;) {
        while (!watch_fired)
            store_message(value, sizeof value);
        watch_fired = 0;
        follow_vcpus();
        static const char path[] = "control/shutdown";
        long n = store_request(XS_READ, path, sizeof path, value, sizeof value);
        u32 reason;
        if (n > 0 && (same(value, n, "poweroff") || same(value, n, "halt")))
            reason = SHUTDOWN_poweroff;
        else if (n > 0 && same(value, n, "reboot"))
            reason = SHUTDOWN_reboot;
        else if (n > 0 && same(value, n, "suspend")) {
            acknowledge();
            suspend();
            continue;
        } else
            continue;
        acknowledge();
        say("xend-ext tiny guest: shutting down\r\n");
        hypercall3(HYPERVISOR_sched_op, SCHEDOP_shutdown, (long)&reason, 0);
    }
}
