package config

import (
	"fmt"
	"slices"
	"strings"
)

// Pos is a place in a config file. Line and Col start at 1; Col counts
// characters (not bytes). A zero Line means "somewhere in File".
type Pos struct {
	File string
	Line int
	Col  int
}

func (p Pos) String() string {
	switch {
	case p.File == "" && p.Line == 0:
		return "-"
	case p.Line == 0:
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// IsValid reports whether p points at a line.
func (p Pos) IsValid() bool { return p.Line > 0 }

// Error is one problem found in a config file.
type Error struct {
	File string
	Line int
	Col  int
	Msg  string
}

func (e Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Pos returns where the error is.
func (e Error) Pos() Pos { return Pos{File: e.File, Line: e.Line, Col: e.Col} }

// Errors is every problem found in one load, sorted by file and position.
// Load returns it (as error) when the config is invalid.
type Errors []Error

func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// sortDedup sorts errors by file, line, column and message, and drops exact
// duplicates (an inherited check key can be reported once per backend).
func (es Errors) sortDedup() Errors {
	slices.SortStableFunc(es, func(a, b Error) int {
		if c := strings.Compare(a.File, b.File); c != 0 {
			return c
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		if a.Col != b.Col {
			return a.Col - b.Col
		}
		return strings.Compare(a.Msg, b.Msg)
	})
	return slices.Compact(es)
}

// errs collects errors.
type errs struct{ list Errors }

func (e *errs) at(p Pos, format string, args ...any) {
	e.list = append(e.list, Error{File: p.File, Line: p.Line, Col: p.Col, Msg: fmt.Sprintf(format, args...)})
}
