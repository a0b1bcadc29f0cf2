// Package config loads lvsd's TOML configuration: it follows include globs,
// applies defaults, validates everything it can, and returns typed values
// (netip addresses, time.Duration, small string enums) so that consumers
// never parse again.
//
// Errors. Load reports every problem it finds in one run as an Errors value,
// each printing as "file:line:col: message", sorted by file and position. A
// TOML syntax error stops the parse of that file; all semantic checks still
// run on the other files. Every semantic error points at the key (or the
// array element, or the table header) at fault.
//
// Positions. BurntSushi/toml and go-toml's decoder keep key positions
// private, and for arrays of tables they key them without the element index,
// so neither can say "the weight of the 7th backend". This package parses
// with go-toml's unstable parser, which gives every key and value its byte
// range, and applies TOML's table rules itself (tree.go); tests check that
// it accepts exactly what go-toml's decoder accepts, with the same values.
//
// Reloads. A Loader caches each file's decoded, locally checked contents,
// keyed by size, mtime, ctime and inode, and keeps an index of the names
// and kernel identities of all services. A reload re-parses only changed
// files and re-indexes only their services; services from unchanged files
// are the very same *Service values as in the previous Config, so a caller
// can skip them when diffing. Configs are therefore read-only.
//
// Defaults are documented on the fields of each type and, with the meaning
// of every key, in configs/reference.toml.
package config
