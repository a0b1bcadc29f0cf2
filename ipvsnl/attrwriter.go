package ipvsnl

import "encoding/binary"

// attrWriter appends netlink attributes to a byte slice in place.
//
// Requests are decoded with the netlink library, but encoded here:
// netlink.AttributeEncoder allocates for every attribute, and at 110,000
// requests on the lab's emulated CPU that cost as much as the kernel's own
// work. The format is the plain TLV of <linux/netlink.h>: a native-endian
// u16 length (header included, padding excluded), a u16 type, the payload,
// then zero padding to 4 bytes.
type attrWriter struct{ b []byte }

const (
	nlaHdrLen    = 4
	nlaFNested   = 0x8000 // NLA_F_NESTED
	nlaAlignMask = 3
)

func (w *attrWriter) header(typ uint16, payload int) {
	w.b = binary.NativeEndian.AppendUint16(w.b, uint16(nlaHdrLen+payload))
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
}

func (w *attrWriter) pad() {
	for len(w.b)&nlaAlignMask != 0 {
		w.b = append(w.b, 0)
	}
}

func (w *attrWriter) bytes(typ uint16, v []byte) {
	w.header(typ, len(v))
	w.b = append(w.b, v...)
	w.pad()
}

func (w *attrWriter) u8(typ uint16, v uint8) {
	w.header(typ, 1)
	w.b = append(w.b, v)
	w.pad()
}

func (w *attrWriter) u16(typ uint16, v uint16) {
	w.header(typ, 2)
	w.b = binary.NativeEndian.AppendUint16(w.b, v)
	w.pad()
}

// be16 writes a __be16 (ports).
func (w *attrWriter) be16(typ uint16, v uint16) {
	w.header(typ, 2)
	w.b = binary.BigEndian.AppendUint16(w.b, v)
	w.pad()
}

func (w *attrWriter) u32(typ uint16, v uint32) {
	w.header(typ, 4)
	w.b = binary.NativeEndian.AppendUint32(w.b, v)
}

// str writes a NUL-terminated string (NLA_NUL_STRING).
func (w *attrWriter) str(typ uint16, s string) {
	w.header(typ, len(s)+1)
	w.b = append(w.b, s...)
	w.b = append(w.b, 0)
	w.pad()
}

// nest opens a nested attribute; end closes it by patching its length.
func (w *attrWriter) nest(typ uint16) int {
	at := len(w.b)
	w.header(typ|nlaFNested, 0)
	return at
}

func (w *attrWriter) end(at int) {
	binary.NativeEndian.PutUint16(w.b[at:], uint16(len(w.b)-at))
}
