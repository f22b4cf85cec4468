package server

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpIO reads and writes a UDP socket with raw recvfrom and sendto system
// calls, waiting on Go's netpoller (syscall.RawConn) when there is
// nothing to read. The socket is non-blocking, so a call never blocks;
// net.UDPConn's ordinary calls go through the runtime's entersyscall,
// which wakes the runtime's monitor thread (sysmon) whenever all Ps were
// idle: at a relay's rate of small bursts that wake-up, and the 20 us
// polls it starts, cost more CPU than the datagrams themselves (measured:
// about an eighth of turnd's time). It also makes no garbage: the
// addresses are netip.AddrPort.
type udpIO struct {
	rc    syscall.RawConn
	inet6 bool // an AF_INET6 socket: IPv4 peers are IPv4-mapped

	// The reader's state; one goroutine reads a socket.
	rbuf  []byte
	rn    int
	rsa   unix.RawSockaddrAny
	rerr  syscall.Errno
	readF func(uintptr) bool
}

func newUDPIO(c *net.UDPConn) (*udpIO, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	u := &udpIO{rc: rc}
	var domain int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	u.inet6 = domain == unix.AF_INET6
	u.readF = u.read
	return u, nil
}

// read is the RawConn.Read callback: false to wait for readability.
func (u *udpIO) read(fd uintptr) bool {
	for {
		l := uint32(unix.SizeofSockaddrAny)
		var p unsafe.Pointer
		if len(u.rbuf) > 0 {
			p = unsafe.Pointer(&u.rbuf[0])
		}
		n, _, e := syscall.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(p), uintptr(len(u.rbuf)), 0,
			uintptr(unsafe.Pointer(&u.rsa)), uintptr(unsafe.Pointer(&l)))
		switch e {
		case 0:
			u.rn, u.rerr = int(n), 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			u.rn, u.rerr = 0, e
			return true
		}
	}
}

// ReadFrom reads a datagram into p; only one goroutine may call it. A
// datagram longer than p is truncated, as net.UDPConn's.
func (u *udpIO) ReadFrom(p []byte) (int, netip.AddrPort, error) {
	u.rbuf = p
	err := u.rc.Read(u.readF)
	u.rbuf = nil
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	if u.rerr != 0 {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Err: u.rerr}
	}
	return u.rn, sockaddrAddrPort(&u.rsa), nil
}

// sockaddrAddrPort is the address of a received datagram as net.UDPConn
// gives it: 4 bytes from an AF_INET socket, 16 (IPv4-mapped for IPv4)
// from an AF_INET6 one.
func sockaddrAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ip := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			ip = ip.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(ip, port)
	}
	return netip.AddrPort{}
}

// udpWrite is one sendto's state, pooled: writers are many goroutines,
// and a closure per call would be garbage per datagram.
type udpWrite struct {
	p      []byte
	sa     unix.RawSockaddrInet6 // or a RawSockaddrInet4 in its first bytes
	salen  uint32
	n      int
	err    syscall.Errno
	writeF func(uintptr) bool
}

var udpWrites = sync.Pool{New: func() any {
	w := &udpWrite{}
	w.writeF = w.write
	return w
}}

func (w *udpWrite) write(fd uintptr) bool {
	for {
		var p unsafe.Pointer
		if len(w.p) > 0 {
			p = unsafe.Pointer(&w.p[0])
		}
		n, _, e := syscall.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(p), uintptr(len(w.p)), 0,
			uintptr(unsafe.Pointer(&w.sa)), uintptr(w.salen))
		switch e {
		case 0:
			w.n, w.err = int(n), 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			w.n, w.err = 0, e
			return true
		}
	}
}

// WriteTo sends p to ap; any goroutine may call it.
func (u *udpIO) WriteTo(p []byte, ap netip.AddrPort) (int, error) {
	w := udpWrites.Get().(*udpWrite)
	defer udpWrites.Put(w)
	if err := w.setAddr(ap, u.inet6); err != nil {
		return 0, err
	}
	w.p = p
	err := u.rc.Write(w.writeF)
	w.p = nil
	if err != nil {
		return 0, err
	}
	if w.err != 0 {
		return 0, &net.OpError{Op: "write", Net: "udp", Err: w.err}
	}
	return w.n, nil
}

var errAddrFamily = &net.AddrError{Err: "address family does not fit the socket", Addr: ""}

func (w *udpWrite) setAddr(ap netip.AddrPort, inet6 bool) error {
	ip := ap.Addr()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], ap.Port())
	if !inet6 {
		if !ip.Unmap().Is4() {
			return errAddrFamily
		}
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&w.sa))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.Unmap().As4()}
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = port
		w.salen = unix.SizeofSockaddrInet4
		return nil
	}
	if !ip.IsValid() {
		return errAddrFamily
	}
	w.sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
	*(*[2]byte)(unsafe.Pointer(&w.sa.Port)) = port
	if z := ip.Zone(); z != "" {
		if id, err := strconv.ParseUint(z, 10, 32); err == nil {
			w.sa.Scope_id = uint32(id)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			w.sa.Scope_id = uint32(ifi.Index)
		}
	}
	w.salen = unix.SizeofSockaddrInet6
	return nil
}
