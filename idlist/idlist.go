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
	"slices"
	"strings"
)

// ID is an assignment id (a GUID) in 16 bytes.
type ID [16]byte

// Parse reads a GUID in its 36-character 8-4-4-4-12 form, in either case.
func Parse(s string) (ID, bool) {
	var lower [36]byte
	var id ID
	if !lowerGUID(s, &lower) {
		return id, false
	}
	var digits [32]byte
	n := 0
	for i, c := range lower {
		if i != 8 && i != 13 && i != 18 && i != 23 {
			digits[n] = c
			n++
		}
	}
	_, _ = hex.Decode(id[:], digits[:]) // lowerGUID let through hexadecimal digits only
	return id, true
}

// Normalize returns s in lower case if it is exactly a GUID in its 36-character
// 8-4-4-4-12 form, in either case: the one check of an assignment id that every part of
// reprocessor shares (the Graph client keeps its own as a last line of defence).
func Normalize(s string) (string, bool) {
	var lower [36]byte
	if !lowerGUID(s, &lower) {
		return "", false
	}
	return string(lower[:]), true
}

// lowerGUID writes s in lower case to out and reports whether it is a GUID: 36
// characters, dashes at 8, 13, 18 and 23, hexadecimal digits elsewhere.
func lowerGUID(s string, out *[36]byte) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			c += 'a' - 'A'
		default:
			return false
		}
		out[i] = c
	}
	return true
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

// readCSV reads CSV with a header row naming column. It is strict (RFC 4180 quoting, no
// lazy quotes) and bounded: a record is at most MaxLine bytes, however many lines a quoted
// field spans. A record that does not parse, or whose quoted field is still open after
// MaxLine bytes or at the end of the input, is one invalid entry at its first line, and
// reading goes on at the line after it: one bad quote never swallows the rest of the file.
func readCSV(r io.Reader, column string, fn func(Entry) error) error {
	rs := &csvRecords{lines: bufio.NewReaderSize(r, 64<<10)}
	var header []string
	for header == nil {
		rec, err := rs.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ids: %w", err)
		}
		if rec.invalid != "" {
			return fmt.Errorf("read ids: CSV header, line %d: %s", rec.line, rec.invalid)
		}
		header = slices.Clone(rec.fields)
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
		return fmt.Errorf("read ids: CSV header has no column %q (columns: %s)", column, cut(strings.Join(header, ", ")))
	}
	for {
		rec, err := rs.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ids: line %d: %w", rs.lineNo+1, err)
		}
		var e error
		switch {
		case rec.invalid != "":
			e = fn(Entry{Line: rec.line, Invalid: "CSV: " + rec.invalid, Raw: rec.raw})
		case col >= len(rec.fields):
			e = fn(Entry{Line: rec.line, Invalid: fmt.Sprintf("no column %q on this line", column)})
		default:
			e = fn(entry(rec.line, strings.TrimSpace(rec.fields[col])))
		}
		if e != nil {
			return e
		}
	}
}

// csvRecord is one record of a CSV input, or why its lines are not one.
type csvRecord struct {
	line    int // its first line
	fields  []string
	invalid string
	raw     string // an invalid record's first line, cut
}

// csvRecords splits a CSV input into records, line by line, holding at most one record and
// the lines it looked ahead at.
type csvRecords struct {
	lines  *bufio.Reader
	lineNo int        // lines read from the input
	again  []physLine // lines looked ahead at and given back, first first
}

type physLine struct {
	no   int
	text []byte // with its line end; nil for a line longer than MaxLine
}

// line returns the next physical line, one given back first.
func (c *csvRecords) line() (physLine, error) {
	if len(c.again) > 0 {
		l := c.again[0]
		c.again = c.again[1:]
		return l, nil
	}
	b, err := c.lines.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		c.lineNo++
		for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of the long line
			_, err = c.lines.ReadSlice('\n')
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return physLine{}, err
		}
		return physLine{no: c.lineNo}, nil
	case len(b) > 0:
		c.lineNo++
		if c.lineNo == 1 {
			b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
		}
		return physLine{no: c.lineNo, text: bytes.Clone(b)}, nil
	case err == nil:
		return c.line()
	}
	return physLine{}, err
}

// next returns the next record; comments and blank lines are skipped.
func (c *csvRecords) next() (csvRecord, error) {
	for {
		first, err := c.line()
		if err != nil {
			return csvRecord{}, err
		}
		if first.text == nil {
			return csvRecord{line: first.no, invalid: fmt.Sprintf("line longer than %d bytes", MaxLine)}, nil
		}
		rec := first.text
		var more []physLine
		bad := ""
		q := quoteState{fieldStart: true}
		q.feed(rec)
		for bad == "" && q.open() {
			if len(rec) > MaxLine {
				bad = fmt.Sprintf("quoted field not closed within %d bytes", MaxLine)
				break
			}
			l, err := c.line()
			switch {
			case errors.Is(err, io.EOF):
				bad = "quoted field not closed before the end of the input"
			case err != nil:
				return csvRecord{}, err
			case l.text == nil:
				more = append(more, l)
				bad = fmt.Sprintf("line longer than %d bytes inside a quoted field", MaxLine)
			default:
				more = append(more, l)
				rec = append(rec, l.text...)
				q.feed(l.text)
			}
		}
		if bad != "" {
			c.again = append(more, c.again...) // read them again as records of their own
			return csvRecord{line: first.no, invalid: bad, raw: cut(string(first.text))}, nil
		}
		if bytes.IndexByte(rec, '"') < 0 {
			// No quote, one line: the fields are what lies between the commas.
			line := strings.TrimRight(string(rec), "\r\n")
			if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
				continue // a blank line or a comment
			}
			return csvRecord{line: first.no, fields: strings.Split(line, ",")}, nil
		}
		cr := csv.NewReader(bytes.NewReader(rec))
		cr.Comment = '#'
		cr.FieldsPerRecord = -1
		fields, err := cr.Read()
		if errors.Is(err, io.EOF) {
			continue // a comment or a blank line
		}
		if err != nil {
			var pe *csv.ParseError
			msg := err.Error()
			if errors.As(err, &pe) {
				msg = pe.Err.Error()
			}
			c.again = append(more, c.again...)
			return csvRecord{line: first.no, invalid: msg, raw: cut(string(first.text))}, nil
		}
		if len(fields) == 1 && strings.TrimSpace(fields[0]) == "" {
			continue // a line of white space
		}
		return csvRecord{line: first.no, fields: fields}, nil
	}
}

// quoteState follows CSV text line by line to tell whether it ends inside a quoted field,
// which then goes on on the next line: a quote opens a field only at its start, "" inside
// one is a quote, and a quote elsewhere is left for the parser to refuse.
type quoteState struct {
	quoted, fieldStart bool
	pending            bool // a quote closed the field at the end of the last text fed, unless a quote follows ("")
}

func (q *quoteState) feed(b []byte) {
	for _, ch := range b {
		if q.pending {
			q.pending = false
			if ch == '"' {
				continue // "" inside a quoted field
			}
			q.quoted = false
		}
		switch {
		case q.quoted && ch == '"':
			q.pending = true
		case q.quoted:
		case ch == '"' && q.fieldStart:
			q.quoted, q.fieldStart = true, false
		case ch == ',' || ch == '\n':
			q.fieldStart = true
		case ch == '\r':
		default:
			q.fieldStart = false
		}
	}
}

// open reports whether the text fed so far ends inside a quoted field (a closing quote as
// its last byte, at the end of the input, closes it).
func (q *quoteState) open() bool { return q.quoted && !q.pending }

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
