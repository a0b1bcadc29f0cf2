package ipvsnl

import (
	"encoding/binary"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel is a netlink.Socket that behaves like the kernel's IPVS family
// for writes: it applies each request of a sendmsg in order, queues one ack
// per request (one datagram each), drops acks beyond ackCap and then reports
// ENOBUFS once the queue is read empty, as the kernel does on an overrun.
type fakeKernel struct {
	t        *testing.T
	services map[svcKey]Service
	dests    map[svcKey]map[destKey]Destination

	queue   []netlink.Message
	sockErr error
	ackCap  int // 0: unlimited

	// failNth makes the nth request (counting from 0 over the whole test)
	// fail with the errno instead of running.
	failNth map[int]syscall.Errno
	nth     int

	ackOnly  bool // acknowledge without decoding (client-side benchmarks)
	silent   bool // apply requests but never acknowledge them
	sends    int  // sendmsg calls
	reopens  int
	replies  int // answers to writes queued (acks and errors)
	requests []uint8
	// dumpReplies answers a dump request with these generic-netlink
	// payloads (command, attributes).
	dumpReplies func(cmd uint8, payload []byte) []genetlink.Message
}

const fakeFamily = 0x1d

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{
		t:        t,
		services: map[svcKey]Service{},
		dests:    map[svcKey]map[destKey]Destination{},
		failNth:  map[int]syscall.Errno{},
	}
}

// client returns a Client over the fake.
func (k *fakeKernel) client(batch int) *Client {
	log := slog.New(slog.NewTextHandler(testWriter{k.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newClient(netlink.NewConn(k, 4242), fakeFamily, batch, log)
	// A reopened socket has nothing queued: the fake's stale replies go.
	c.dial = func() (*netlink.Conn, error) {
		k.reopens++
		k.queue, k.sockErr = nil, nil
		return netlink.NewConn(k, 4242), nil
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func (k *fakeKernel) Close() error                        { return nil }
func (k *fakeKernel) SetDeadline(time.Time) error         { return nil }
func (k *fakeKernel) SetReadDeadline(time.Time) error     { return nil }
func (k *fakeKernel) SetWriteDeadline(time.Time) error    { return nil }
func (k *fakeKernel) Send(m netlink.Message) error        { return k.SendMessages([]netlink.Message{m}) }
func (k *fakeKernel) Receive() ([]netlink.Message, error) { panic("netlink.Conn uses ReceiveIter") }

func (k *fakeKernel) SendMessages(msgs []netlink.Message) error {
	k.sends++
	for _, m := range msgs {
		if m.Header.Type != fakeFamily {
			k.t.Errorf("request to family %d, want %d", m.Header.Type, fakeFamily)
		}
		if k.ackOnly {
			if m.Header.Flags&netlink.Acknowledge != 0 {
				k.queue = append(k.queue, ack(m, 0))
			}
			continue
		}
		var gm genetlink.Message
		if err := gm.UnmarshalBinary(m.Data); err != nil {
			k.t.Fatalf("bad generic netlink message: %v", err)
		}
		k.requests = append(k.requests, gm.Header.Command)
		if gm.Header.Command == cmdGetService || gm.Header.Command == cmdGetInfo || gm.Header.Command == cmdGetDest || gm.Header.Command == cmdGetDaemon {
			var parts []genetlink.Message
			if k.dumpReplies != nil {
				parts = k.dumpReplies(gm.Header.Command, gm.Data)
			}
			if m.Header.Flags&netlink.Dump != 0 {
				for _, p := range parts {
					b, _ := p.MarshalBinary()
					k.queue = append(k.queue, netlink.Message{Header: netlink.Header{Type: fakeFamily, Flags: netlink.Multi, Sequence: m.Header.Sequence, PID: 4242}, Data: b})
				}
				k.queue = append(k.queue, netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: m.Header.Sequence, PID: 4242}, Data: make([]byte, 4)})
				continue
			}
			if len(parts) == 0 {
				k.queue = append(k.queue, ack(m, unix.ESRCH))
				continue
			}
			b, _ := parts[0].MarshalBinary()
			k.queue = append(k.queue, netlink.Message{Header: netlink.Header{Type: fakeFamily, Sequence: m.Header.Sequence, PID: 4242}, Data: b})
			continue
		}
		errno, refuse := k.failNth[k.nth]
		if !refuse {
			errno = k.apply(gm)
		}
		k.nth++
		if errno == 0 && m.Header.Flags&netlink.Acknowledge == 0 {
			continue
		}
		if k.silent {
			continue
		}
		if k.ackCap > 0 && len(k.queue) >= k.ackCap {
			k.sockErr = unix.ENOBUFS
			continue
		}
		k.queue = append(k.queue, ack(m, errno))
		k.replies++
	}
	return nil
}

// ack builds an NLMSG_ERROR reply as the kernel does with NETLINK_CAP_ACK.
func ack(req netlink.Message, errno syscall.Errno) netlink.Message {
	data := make([]byte, 4+16)
	binary.NativeEndian.PutUint32(data, uint32(-int32(errno)))
	binary.NativeEndian.PutUint32(data[4:], req.Header.Length)
	binary.NativeEndian.PutUint16(data[8:], uint16(req.Header.Type))
	binary.NativeEndian.PutUint32(data[12:], req.Header.Sequence)
	return netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: req.Header.Sequence, PID: 4242}, Data: data}
}

func (k *fakeKernel) ReceiveIter() iter.Seq2[netlink.Message, error] {
	return func(yield func(netlink.Message, error) bool) {
		if len(k.queue) == 0 {
			if err := k.sockErr; err != nil {
				k.sockErr = nil
				yield(netlink.Message{}, os.NewSyscallError("recvmsg", err))
				return
			}
			// A real socket would block until the deadline.
			yield(netlink.Message{}, os.NewSyscallError("recvmsg", os.ErrDeadlineExceeded))
			return
		}
		m := k.queue[0]
		k.queue = k.queue[1:]
		yield(m, nil)
	}
}

// apply runs one write like the kernel: errno 0 on success.
func (k *fakeKernel) apply(gm genetlink.Message) syscall.Errno {
	var svc Service
	var dst Destination
	var haveSvc, haveDst bool
	ad, err := netlink.NewAttributeDecoder(gm.Data)
	if err != nil {
		return unix.EINVAL
	}
	for ad.Next() {
		switch ad.Type() {
		case cmdAttrService:
			haveSvc = true
			ad.Nested(func(nad *netlink.AttributeDecoder) (err error) { svc, err = decodeService(nad); return })
		case cmdAttrDest:
			haveDst = true
			ad.Nested(func(nad *netlink.AttributeDecoder) (err error) { dst, err = decodeDest(nad, svc.Family); return })
		}
	}
	if ad.Err() != nil || !haveSvc {
		return unix.EINVAL
	}
	sk := keyOf(svc)
	_, exists := k.services[sk]
	cmd := Command(gm.Header.Command)
	if cmd.isDest() && !haveDst {
		return unix.EINVAL
	}
	switch cmd {
	case CmdNewService:
		if exists {
			return unix.EEXIST
		}
		k.services[sk] = svc
		k.dests[sk] = map[destKey]Destination{}
		return 0
	}
	if !exists {
		return unix.ESRCH
	}
	dk := destKey{sk, dst.Address, dst.Port}
	_, dexists := k.dests[sk][dk]
	switch cmd {
	case CmdSetService:
		k.services[sk] = svc
	case CmdDelService:
		delete(k.services, sk)
		delete(k.dests, sk)
	case CmdNewDest:
		if dexists {
			return unix.EEXIST
		}
		k.dests[sk][dk] = dst
	case CmdSetDest:
		if !dexists {
			return unix.ENOENT
		}
		k.dests[sk][dk] = dst
	case CmdDelDest:
		if !dexists {
			return unix.ENOENT
		}
		delete(k.dests[sk], dk)
	default:
		panic(fmt.Sprintf("fake kernel: command %d", cmd))
	}
	return 0
}

func (k *fakeKernel) destCount() int {
	n := 0
	for _, m := range k.dests {
		n += len(m)
	}
	return n
}
