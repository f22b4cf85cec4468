package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"chatmail.dev/sidecar/turncred"
	"github.com/pion/logging"
	"github.com/pion/turn/v4"
)

// turnCred prints the password of a TURN username (a decimal expiry),
// computed as turnd and metadata-proxy compute it, from the same secret
// file ([turn] secret_file), so that the bench hands turnd and coturn the
// credential a client would get.
func turnCred(args []string) error {
	fs := flag.NewFlagSet("turn-cred", flag.ExitOnError)
	secretFile := fs.String("secret-file", "", "the [turn] secret_file")
	expiry := fs.Int64("expiry", 0, "the credential's expiry, a Unix time (its username)")
	fs.Parse(args)
	if *secretFile == "" || *expiry <= 0 {
		return fmt.Errorf("turn-cred: -secret-file and -expiry are needed")
	}
	secret, err := turncred.LoadSecret(*secretFile)
	if err != nil {
		return err
	}
	user := turncred.Username(*expiry)
	fmt.Println(user, turncred.Password(secret, user))
	return nil
}

// turnAlloc is the turn-alloc subcommand: n allocations over c clients,
// each made as Delta Chat's call makes one (turnAllocOp). A failed
// allocation is counted by kind and the run goes on, so that a server that
// refuses some is measured, not aborted.
//
// It prints one line: allocations/s (the successful ones over the whole
// time), p50 and p99 latency of the successful ones (ms), the CPU time the
// whole machine spent per allocation (ms), the failures, and their kinds
// ("-" for none; "allocate-437:3,release-unanswered:1").
//
// With -trace every STUN message sent and received is written to stderr
// (type, transaction, error code), to see what a server answered.
func turnAlloc(args []string) error {
	fs := flag.NewFlagSet("turn-alloc", flag.ExitOnError)
	addr := fs.String("addr", "", "TURN server host:port (UDP)")
	user := fs.String("user", "", "username")
	pass := fs.String("pass", "", "password")
	n := fs.Int("n", 1000, "allocations")
	conc := fs.Int("c", 16, "concurrent clients")
	trace := fs.Bool("trace", false, "log every STUN message to stderr")
	fs.Parse(args)
	server, err := netip.ParseAddrPort(*addr)
	if err != nil {
		return fmt.Errorf("turn-alloc: -addr: %w", err)
	}
	src := newSources(server.Addr())
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError

	lat := make([]time.Duration, 0, *n)
	var mu sync.Mutex // lat, fails
	fails := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := busyCPU()
	start := time.Now()
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) {
				t := time.Now()
				kind := turnAllocOp(*addr, src.next(), *user, *pass, lf, *trace)
				d := time.Since(t)
				mu.Lock()
				if kind == "" {
					lat = append(lat, d)
				} else {
					fails[kind]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := busyCPU() - cpu0
	if len(lat) == 0 {
		return fmt.Errorf("turn-alloc: no allocation succeeded: %s", failKinds(fails))
	}
	slices.Sort(lat)
	fmt.Printf("%.0f %.3f %.3f %.3f %d %s\n", float64(len(lat))/elapsed.Seconds(),
		lat[len(lat)/2].Seconds()*1000, lat[len(lat)*99/100].Seconds()*1000,
		cpu.Seconds()*1000/float64(*n), *n-len(lat), failKinds(fails))
	return nil
}

func failKinds(fails map[string]int) string {
	if len(fails) == 0 {
		return "-"
	}
	var ks []string
	for k, v := range fails {
		ks = append(ks, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

// sources hands every allocation a source address of its own. A server
// may keep an allocation's 5-tuple for a while after it was released:
// coturn deletes a released allocation only at its next timer pass (about
// a second later) and until then answers a new Allocate from the same
// 5-tuple with 437 Allocation Mismatch. With the kernel's ephemeral ports
// one client machine making hundreds of allocations a second reuses such a
// port now and then (about one allocation in a few hundred), which real
// clients, on as many addresses and ports, practically never do. On
// loopback every 127/8 address is ours: each allocation gets the next one
// (from a random start, so runs in a row do not meet either).
type sources struct {
	loopback bool
	n        atomic.Uint32
}

// sourceSpace is 127.64.0.0/10: 4 M addresses.
const sourceSpace = 1 << 22

func newSources(server netip.Addr) *sources {
	s := &sources{loopback: server.Is4() && server.IsLoopback()}
	s.n.Store(rand.Uint32N(sourceSpace))
	return s
}

func (s *sources) next() string {
	if !s.loopback {
		return "0.0.0.0:0"
	}
	for {
		i := s.n.Add(1) % sourceSpace
		if b := byte(i); b == 0 || b == 255 {
			continue
		}
		a := netip.AddrFrom4([4]byte{127, 64 | byte(i>>16), byte(i >> 8), byte(i)})
		return netip.AddrPortFrom(a, 0).String()
	}
}

// releaseWait is how long the answer to the releasing Refresh may take.
const releaseWait = 3 * time.Second

// turnAllocOp makes one allocation as Delta Chat's call makes it, through
// pion's client: a new UDP socket, an Allocate (answered 401 with a nonce,
// then again with the credential), and the allocation released (Refresh
// with lifetime 0) and the socket closed. pion sends the releasing Refresh
// without waiting for its answer; the op waits for it (stunWatch), so that
// an allocation counts when the server has released it, on both servers
// alike. It returns "" or the kind of failure.
func turnAllocOp(addr, local, user, pass string, lf logging.LoggerFactory, trace bool) string {
	conn, err := net.ListenPacket("udp4", local)
	if err != nil {
		return "socket"
	}
	w := &stunWatch{PacketConn: conn, released: make(chan int, 1), trace: trace}
	defer w.Close()
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr,
		TURNServerAddr: addr,
		Conn:           w,
		Username:       user,
		Password:       pass,
		LoggerFactory:  lf,
	})
	if err != nil {
		return "client"
	}
	defer c.Close()
	if err := c.Listen(); err != nil {
		return "listen"
	}
	relay, err := c.Allocate()
	if err != nil {
		if code := w.lastError.Load(); code != 0 {
			return fmt.Sprintf("allocate-%d", code)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
			return "allocate-timeout"
		}
		return "allocate-other"
	}
	if err := relay.Close(); err != nil {
		return "release-send"
	}
	select {
	case code := <-w.released:
		if code != 0 {
			return fmt.Sprintf("release-%d", code)
		}
		return ""
	case <-time.After(releaseWait):
		return "release-unanswered"
	}
}

// stunWatch wraps a TURN client's socket and reads the STUN headers that
// pass: it remembers the transaction of the last Refresh sent, reports the
// answer to it on released (0 for success, else the error code), and keeps
// the last error code any answer carried. With trace it logs every message.
type stunWatch struct {
	net.PacketConn
	released  chan int
	lastError atomic.Int32
	trace     bool

	mu        sync.Mutex
	refreshTx [12]byte
}

// STUN message types (RFC 8489, 8656) the watch tells apart.
const (
	stunRefreshRequest = 0x0004
	stunRefreshSuccess = 0x0104
	stunRefreshError   = 0x0114
	stunErrorClass     = 0x0110 // class bits of an error response
	stunAttrErrorCode  = 0x0009
)

func (w *stunWatch) WriteTo(p []byte, to net.Addr) (int, error) {
	if typ, tx, ok := stunHeader(p); ok {
		if typ&stunErrorClass == 0 { // a request: its answer is still to come
			w.lastError.Store(0)
		}
		if typ == stunRefreshRequest {
			w.mu.Lock()
			w.refreshTx = tx
			w.mu.Unlock()
		}
		if w.trace {
			fmt.Fprintf(os.Stderr, "%s %v > %v type %#04x tx %x\n", time.Now().Format("15:04:05.000000"), w.LocalAddr(), to, typ, tx)
		}
	}
	return w.PacketConn.WriteTo(p, to)
}

func (w *stunWatch) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := w.PacketConn.ReadFrom(p)
	if err != nil {
		return n, from, err
	}
	typ, tx, ok := stunHeader(p[:n])
	if !ok {
		return n, from, err
	}
	code := 0
	if typ&stunErrorClass == stunErrorClass {
		code = stunErrorCode(p[:n])
		w.lastError.Store(int32(code))
	}
	if w.trace {
		fmt.Fprintf(os.Stderr, "%s %v < %v type %#04x tx %x error %d\n", time.Now().Format("15:04:05.000000"), w.LocalAddr(), from, typ, tx, code)
	}
	if typ == stunRefreshSuccess || typ == stunRefreshError {
		w.mu.Lock()
		mine := tx == w.refreshTx
		w.mu.Unlock()
		if mine {
			select {
			case w.released <- code:
			default:
			}
		}
	}
	return n, from, err
}

// stunHeader returns the type and transaction of a STUN message (a 20-byte
// header with the magic cookie; ChannelData starts with 0b01).
func stunHeader(p []byte) (typ uint16, tx [12]byte, ok bool) {
	if len(p) < 20 || p[0]&0xc0 != 0 || binary.BigEndian.Uint32(p[4:8]) != 0x2112a442 {
		return 0, tx, false
	}
	copy(tx[:], p[8:20])
	return binary.BigEndian.Uint16(p[0:2]), tx, true
}

// stunErrorCode returns the ERROR-CODE of a STUN message, or -1.
func stunErrorCode(p []byte) int {
	end := 20 + int(binary.BigEndian.Uint16(p[2:4]))
	for i := 20; i+4 <= end && i+4 <= len(p); {
		t, l := binary.BigEndian.Uint16(p[i:]), int(binary.BigEndian.Uint16(p[i+2:]))
		if t == stunAttrErrorCode && l >= 4 && i+8 <= len(p) {
			return int(p[i+6]&7)*100 + int(p[i+7])
		}
		i += 4 + (l+3)&^3
	}
	return -1
}
