#!/usr/bin/perl
# A first session from Perl with RPC::XML (Debian: librpc-xml-perl): a CPU pool, a VM started
# in it, a VM group, a scheduling domain, an error, events.
#
#     perl first_session.pl http://127.0.0.1:9363/ [CPU]
#
# CPU (default 7) is the pCPU taken from Pool-0 for the new pool. Every name starts with "perl-".
# RPC::XML guesses types from the text: it sends "1.0" as a <double> and "7" as an <int>; the
# server reads a number sent for a string parameter as the text it was sent as (docs/api/wire.md).
use strict;
use warnings;
use RPC::XML;
use RPC::XML::Client;

my $url = $ARGV[0] // 'http://127.0.0.1:9363/';
my $cpu = $ARGV[1] // '7';
my $client = RPC::XML::Client->new($url);
my $session;

# call(method, params...): the session first, the Xen-API envelope unwrapped; a failure dies
# with the ErrorDescription (an array ref: code, params...).
sub call {
    my ($method, @params) = @_;
    unshift @params, $session if defined $session;
    my $reply = $client->simple_request($method, @params);
    die "$method: $RPC::XML::ERROR\n" unless defined $reply;
    die $reply->{ErrorDescription} unless $reply->{Status} eq 'Success';
    return $reply->{Value};
}

sub record { my ($class, $ref) = @_; return call("$class.get_record", $ref) }

my $false = RPC::XML::boolean->new(0);

sub vm {
    my ($name) = @_;
    return call('VM.create', { name_label => $name, memory_static_max => '268435456', VCPUs_max => '1',
                               pool_name => 'perl-pool' });
}

sub main {
    $session = call('session.login_with_password', 'root', '', '1.0', 'perl-example');
    print "session: $session\n";

    # A pool of one pCPU, taken from Pool-0 (which holds every pCPU at boot), then activated.
    my ($pool0) = @{ call('cpu_pool.get_by_name_label', 'Pool-0') };
    for my $ref (keys %{ call('host_cpu.get_all_records_where', qq{field "number"="$cpu"}) }) {
        call('cpu_pool.remove_host_CPU_live', $pool0, $ref);
}
my $pool = call('cpu_pool.create', { name_label => 'perl-pool', proposed_CPUs => [$cpu] });
call('cpu_pool.activate', $pool);
printf "cpu_pool perl-pool: activated %s on CPU %s\n", (record('cpu_pool', $pool)->{activated} ? 'true' : 'false'), $cpu;

# Watch VMs from now on: event.from with an empty token gives the current token.
my $token = call('event.from', ['VM'], '', 0.0)->{token};

my $web = vm('perl-vm');
call('VM.start', $web, $false, $false);
my $web_record = record('VM', $web);
print "VM perl-vm: $web_record->{power_state} in $web_record->{pool_name}\n";

my $db = vm('perl-vm2');
my $group = call('VM_group.create', { name_label => 'perl-group' });
call('VM_group.add_VM', $group, $db);
call('VM_group.start', $group, $false);
printf "VM_group perl-group: started, perl-vm2 %s\n", record('VM', $db)->{power_state};

my $sd = call('sched_domain.create', { name_label => 'perl-sd', master => $web, members => [$db] });
my $sd_record = record('sched_domain', $sd);
printf "sched_domain perl-sd: master %s, %d member(s)\n", record('VM', $sd_record->{master})->{name_label},
    scalar @{ $sd_record->{members} };

# An error, handled: starting a running VM is VM_BAD_POWER_STATE [vm, expected, actual].
eval { call('VM.start', $web, $false, $false); 1 } or do {
    my $error = $@;
    die $error unless ref $error eq 'ARRAY' && $error->[0] eq 'VM_BAD_POWER_STATE';
    print "error handled: $error->[0] (perl-vm is $error->[3], not $error->[2])\n";
};

my $answer = call('event.from', ['VM'], $token, 1.0);
print 'events: ', join('; ', map { "$_->{operation} $_->{snapshot}{name_label} $_->{snapshot}{power_state}" }
                                 @{ $answer->{events} }), "\n";
call('session.logout');
}

# a Xen-API failure that was not handled: its code and params on one line
eval { main(); 1 } or die(ref $@ eq 'ARRAY' ? "@{$@}\n" : $@);
