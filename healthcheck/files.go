package healthcheck

import (
	"crypto/sha256"
	"os"
)

// fileStamp is what a checker read from a file when it was built (a CA
// bundle), so that Monitor.Update can tell that a check whose spec did not
// change must still be rebuilt because the file did.
type fileStamp struct {
	field string // config key, for errors: "ca_file"
	path  string
	sum   [sha256.Size]byte // of the bytes the checker used
}

func stampOf(field, path string, content []byte) fileStamp {
	return fileStamp{field: field, path: path, sum: sha256.Sum256(content)}
}

// filesRead is embedded in checkers that read files when built.
type filesRead []fileStamp

func (f filesRead) stamps() []fileStamp { return f }

// fileReader is a checker built from files (see filesRead).
type fileReader interface{ stamps() []fileStamp }

// fileSums reads each file once (per Update) and remembers its digest or
// the error reading it.
type fileSums map[string]fileSum

type fileSum struct {
	sum [sha256.Size]byte
	err error
}

// stale returns the first file c was built from that now differs from what
// it read, or nil. A file that cannot be read is an error naming its field,
// as when the checker was built.
func (fs fileSums) stale(c Checker) (*fileStamp, error) {
	fr, ok := c.(fileReader)
	if !ok {
		return nil, nil
	}
	for i, st := range fr.stamps() {
		cur, ok := fs[st.path]
		if !ok {
			b, err := os.ReadFile(st.path)
			cur = fileSum{sum: sha256.Sum256(b), err: err}
			fs[st.path] = cur
		}
		if cur.err != nil {
			return nil, fieldErr(st.field, "%v", cur.err)
		}
		if cur.sum != st.sum {
			return &fr.stamps()[i], nil
		}
	}
	return nil, nil
}
