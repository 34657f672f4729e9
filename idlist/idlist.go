// Package idlist reads access package assignment ids from plain text, CSV or JSON lines as
// a stream, reporting invalid entries with their line numbers, and keeps sets of ids in a
// compact form (16 bytes per id) so that memory grows with the number of distinct ids only.
package idlist

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ID is an assignment id (a GUID) in 16 bytes.
type ID [16]byte

// Parse reads a GUID in its 36-character 8-4-4-4-12 form, in either case.
func Parse(s string) (ID, bool) {
	var id ID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return id, false
	}
	var buf [32]byte
	n := 0
	for i := 0; i < 36; i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue
		}
		buf[n] = s[i]
		n++
	}
	if _, err := hex.Decode(id[:], buf[:]); err != nil {
		return ID{}, false
	}
	return id, true
}

// String returns the id in lower case, 8-4-4-4-12.
func (id ID) String() string {
	var s [36]byte
	hex.Encode(s[0:8], id[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], id[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], id[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], id[8:10])
	s[23] = '-'
	hex.Encode(s[24:], id[10:])
	return string(s[:])
}

// Set is a set of ids. The zero value is not usable: call NewSet.
type Set struct{ m map[ID]struct{} }

// NewSet returns an empty set sized for about n ids.
func NewSet(n int) *Set { return &Set{m: make(map[ID]struct{}, n)} }

// Add adds id and reports whether it was new.
func (s *Set) Add(id ID) bool {
	if _, ok := s.m[id]; ok {
		return false
	}
	s.m[id] = struct{}{}
	return true
}

// Has reports whether id is in the set.
func (s *Set) Has(id ID) bool { _, ok := s.m[id]; return ok }

// Len returns the number of ids in the set.
func (s *Set) Len() int { return len(s.m) }

// Format is the layout of an input.
type Format struct {
	// Column, when set, reads CSV with a header row and takes the ids from this column
	// (matched without regard to case or surrounding white space).
	Column string
	// Field, when set, reads JSON lines (one object per line) and takes the ids from this
	// top-level string member.
	Field string
}

// Entry is one id read from an input, or one entry that is not an id.
type Entry struct {
	Line    int    // 1-based line number in the input
	ID      ID     // the id, when Invalid is empty
	Invalid string // why the entry is not an id; empty for a valid one
	Raw     string // the entry as read, cut to 80 bytes (for messages)
}

// MaxLine is the longest line read; a longer line is reported invalid.
const MaxLine = 64 << 10

// ErrStop, returned by the callback of Read, stops reading without an error.
var ErrStop = errors.New("stop reading")

// Read reads r as a stream in format f and calls fn for every entry that is neither blank
// nor a comment (a line starting with '#'), in input order. Duplicates are passed on: the
// caller decides. It returns fn's error, nil for ErrStop, or an error reading r (or a CSV
// header without the column).
func Read(r io.Reader, f Format, fn func(Entry) error) error {
	var err error
	switch {
	case f.Column != "" && f.Field != "":
		return errors.New("read ids: a CSV column and a JSON field cannot both be given")
	case f.Column != "":
		err = readCSV(r, f.Column, fn)
	default:
		err = readLines(r, f.Field, fn)
	}
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// readLines reads plain text (field == "") or JSON lines.
func readLines(r io.Reader, field string, fn func(Entry) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	line := 0
	var long bool // inside a line longer than the buffer
	for {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !long {
				line++
				long = true
				if e := fn(Entry{Line: line, Invalid: fmt.Sprintf("line longer than %d bytes", MaxLine), Raw: cut(string(b))}); e != nil {
					return e
				}
			}
			continue
		}
		if long {
			long = false
		} else if len(b) > 0 {
			line++
			if line == 1 {
				b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
			}
			if e := parseLine(b, line, field, fn); e != nil {
				return e
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ids: line %d: %w", line+1, err)
		}
	}
}

func parseLine(b []byte, line int, field string, fn func(Entry) error) error {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] == '#' {
		return nil
	}
	if field == "" {
		return fn(entry(line, string(t)))
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(t, &obj); err != nil {
		return fn(Entry{Line: line, Invalid: "not a JSON object", Raw: cut(string(t))})
	}
	raw, ok := obj[field]
	if !ok {
		return fn(Entry{Line: line, Invalid: fmt.Sprintf("no %q member", field), Raw: cut(string(t))})
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fn(Entry{Line: line, Invalid: fmt.Sprintf("member %q is not a string", field), Raw: cut(string(raw))})
	}
	return fn(entry(line, strings.TrimSpace(s)))
}

// readCSV reads CSV with a header row naming column.
func readCSV(r io.Reader, column string, fn func(Entry) error) error {
	cr := csv.NewReader(bufio.NewReaderSize(r, 64<<10))
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	cr.LazyQuotes = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read ids: CSV header: %w", err)
	}
	col := -1
	for i, h := range header {
		h = strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))
		if strings.EqualFold(h, strings.TrimSpace(column)) {
			col = i
			break
		}
	}
	if col < 0 {
		return fmt.Errorf("read ids: CSV header has no column %q (columns: %s)", column, strings.Join(header, ", "))
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			if e := fn(Entry{Line: pe.StartLine, Invalid: "CSV: " + pe.Err.Error()}); e != nil {
				return e
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read ids: %w", err)
		}
		line, _ := cr.FieldPos(0)
		if col >= len(rec) {
			if e := fn(Entry{Line: line, Invalid: fmt.Sprintf("no column %q on this line", column)}); e != nil {
				return e
			}
			continue
		}
		v := strings.TrimSpace(rec[col])
		if v == "" && len(rec) == 1 {
			continue // a blank line
		}
		if e := fn(entry(line, v)); e != nil {
			return e
		}
	}
}

// entry validates one id as written.
func entry(line int, s string) Entry {
	id, ok := Parse(s)
	if !ok {
		return Entry{Line: line, Invalid: "not an assignment id (a GUID, 8-4-4-4-12 hexadecimal digits)", Raw: cut(s)}
	}
	return Entry{Line: line, ID: id, Raw: s}
}

func cut(s string) string {
	s = strings.TrimRight(s, "\r\n")
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
