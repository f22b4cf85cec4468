package stack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Net is a test network (scripts/stack net up): a bridge in the root
// network namespace, a DNS server (dnsmasq) on its address that serves the
// records of the stacks in it and nothing else, and a test CA whose root
// those stacks trust. Stacks join it with NetNS.
type Net struct {
	Dir    string
	Env    map[string]string // net.env: BRIDGE, GATEWAY, PREFIX, CA_FILE, DNS_LOG...
	Subnet int               // the third byte of 10.77.X.0/24
}

// NetUp makes a network with the gateway 10.77.subnet.1/24 and the bridge
// cmbr<subnet>.
func NetUp(subnet int) (*Net, error) {
	dir, err := os.MkdirTemp("", "cmnet")
	if err != nil {
		return nil, err
	}
	n := &Net{Dir: dir, Subnet: subnet}
	out, err := exec.Command(filepath.Join(Repo(), "scripts", "stack"), "net", "up", dir,
		"--subnet", fmt.Sprintf("10.77.%d.1/24", subnet), "--bridge", fmt.Sprintf("cmbr%d", subnet)).CombinedOutput()
	if err != nil {
		derr := n.Down()
		return nil, fmt.Errorf("scripts/stack net up: %v\n%s(down: %v)", err, out, derr)
	}
	if n.Env, err = ReadEnv(filepath.Join(dir, "net.env")); err != nil {
		return nil, errors.Join(err, n.Down())
	}
	return n, nil
}

// Down stops the DNS server and removes the bridge and the CA.
func (n *Net) Down() error {
	if _, err := os.Stat(filepath.Join(n.Dir, ".chatmail-net")); err == nil {
		out, err := exec.Command(filepath.Join(Repo(), "scripts", "stack"), "net", "down", n.Dir).CombinedOutput()
		if err != nil {
			return fmt.Errorf("scripts/stack net down %s: %v\n%s", n.Dir, err, out)
		}
	}
	return os.RemoveAll(n.Dir)
}

// Addr returns the address of host number i (2..254) of the network, as
// --addr takes it: 10.77.X.i/24.
func (n *Net) Addr(i int) string { return fmt.Sprintf("10.77.%d.%d/24", n.Subnet, i) }

// NetNS runs the stack in the network namespace name (at most 12 of
// [a-z0-9-]) with the address addr (Net.Addr) on n's bridge.
func NetNS(n *Net, name, addr string) Option {
	return func(a *[]string) { *a = append(*a, "--net", n.Dir, "--netns", name, "--addr", addr) }
}

// Federation starts a network and two stacks in it, A (domain
// fed-a.test, host .2) and B (fed-b.test, host .3), each in its own
// network namespace, and takes all of it down when t ends. Postfix of
// each finds the other by the DNS's MX records and verifies its
// certificate against the test CA; each milter finds the other's DKIM
// key in the DNS. opts apply to both stacks.
func Federation(t testing.TB, opts ...Option) (a, b *Stack) {
	t.Helper()
	n := StartNet(t)
	prefix := fmt.Sprintf("cm%d", n.Subnet)
	a = Start(t, append([]Option{Domain("fed-a.test"), NetNS(n, prefix+"a", n.Addr(2))}, opts...)...)
	b = Start(t, append([]Option{Domain("fed-b.test"), NetNS(n, prefix+"b", n.Addr(3))}, opts...)...)
	return a, b
}

// StartNet makes a network for t (NetUp) and removes it when t ends, after
// the stacks started later (t.Cleanup runs last in, first out). The subnet
// comes from the process id, so that test processes running at once keep
// apart; a taken one is skipped.
func StartNet(t testing.TB) *Net {
	t.Helper()
	var errs []error
	for i := range 5 {
		n, err := NetUp((os.Getpid()+i)%200 + 20)
		if err == nil {
			t.Cleanup(func() {
				if err := n.Down(); err != nil {
					t.Error(err)
				}
			})
			return n
		}
		errs = append(errs, err)
	}
	t.Fatal(errors.Join(errs...))
	return nil
}
