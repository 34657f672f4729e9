package idlist

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"io"
	"runtime"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	a = "0a1b2c3d-0000-4000-8000-000000000001"
	b = "0A1B2C3D-0000-4000-8000-000000000002"
)

func collect(t *testing.T, in string, f Format) (ids []string, invalid map[int]string) {
	t.Helper()
	invalid = map[int]string{}
	err := Read(strings.NewReader(in), f, func(e Entry) error {
		if e.Invalid != "" {
			invalid[e.Line] = e.Raw
			return nil
		}
		ids = append(ids, e.ID.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids, invalid
}

func TestParseRoundTrip(t *testing.T) {
	t.Parallel()
	id, ok := Parse(b)
	if !ok || id.String() != strings.ToLower(b) {
		t.Fatalf("Parse(%q) = %v, %v", b, id, ok)
	}
	for _, bad := range []string{"", "../../users", "{" + a[1:], a + " ", strings.Replace(a, "-", "x", 1), strings.Replace(a, "a", "g", 1)} {
		if _, ok := Parse(bad); ok {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestReadText(t *testing.T) {
	t.Parallel()
	in := "\ufeff" + a + "\n\n# comment\n  " + b + "  \r\nnot-an-id\n" + a + "\n" + strings.Repeat("x", MaxLine+10) + "\n" + b
	ids, invalid := collect(t, in, Format{})
	want := []string{a, strings.ToLower(b), a, strings.ToLower(b)}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("ids = %v, want %v", ids, want)
	}
	if len(invalid) != 2 || invalid[5] != "not-an-id" || invalid[7] == "" {
		t.Fatalf("invalid = %v, want lines 5 and 7", invalid)
	}
}

func TestReadCSV(t *testing.T) {
	t.Parallel()
	in := "name, Assignment Id \nx," + a + "\n# skipped\n\ny,bogus\nz\n\"q\"," + b + "\n"
	ids, invalid := collect(t, in, Format{Column: "assignment id"})
	if len(ids) != 2 || ids[0] != a || ids[1] != strings.ToLower(b) {
		t.Fatalf("ids = %v", ids)
	}
	if len(invalid) != 2 || invalid[5] != "bogus" {
		t.Fatalf("invalid = %v, want lines 5 and 6", invalid)
	}
	if _, ok := invalid[6]; !ok {
		t.Fatalf("invalid = %v, want line 6 (missing column)", invalid)
	}
	err := Read(strings.NewReader("a,b\n1,2\n"), Format{Column: "id"}, func(Entry) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `no column "id"`) {
		t.Fatalf("missing column: err = %v", err)
	}
}

func TestReadJSONLines(t *testing.T) {
	t.Parallel()
	in := `{"assignmentId":"` + a + `","x":1}` + "\n# c\n" + `{"assignmentId":5}` + "\n[1]\n" + `{"other":"` + b + `"}` + "\n" + `{"assignmentId":" ` + b + `"}`
	ids, invalid := collect(t, in, Format{Field: "assignmentId"})
	if len(ids) != 2 || ids[0] != a || ids[1] != strings.ToLower(b) {
		t.Fatalf("ids = %v", ids)
	}
	for _, l := range []int{3, 4, 5} {
		if _, ok := invalid[l]; !ok {
			t.Fatalf("invalid = %v, want lines 3, 4, 5", invalid)
		}
	}
}

func TestReadStops(t *testing.T) {
	t.Parallel()
	n := 0
	err := Read(strings.NewReader(a+"\n"+b+"\n"), Format{}, func(Entry) error { n++; return ErrStop })
	if err != nil || n != 1 {
		t.Fatalf("err = %v, n = %d", err, n)
	}
	boom := errors.New("boom")
	if err := Read(strings.NewReader(a), Format{}, func(Entry) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

func TestSet(t *testing.T) {
	t.Parallel()
	s := NewSet(0)
	x, _ := Parse(a)
	if !s.Add(x) || s.Add(x) || !s.Has(x) || s.Len() != 1 {
		t.Fatal("set misbehaves")
	}
}

func FuzzRead(f *testing.F) {
	f.Add(a + "\n#x\n" + b)
	f.Add("id\n\"" + a)
	f.Fuzz(func(t *testing.T, in string) {
		for _, format := range []Format{{}, {Column: "id"}, {Field: "id"}} {
			_ = Read(strings.NewReader(in), format, func(e Entry) error {
				if e.Invalid == "" {
					if _, ok := Parse(e.ID.String()); !ok {
						t.Fatalf("bad id %v", e.ID)
					}
				}
				return nil
			})
		}
	})
}

// TestReadCSVUnterminatedQuote: one unterminated quote in another column costs one invalid
// line with its number; every row after it is still read.
func TestReadCSVUnterminatedQuote(t *testing.T) {
	t.Parallel()
	var in strings.Builder
	in.WriteString("note,assignmentId\n")
	in.WriteString("\"unterminated," + a + "\n")
	const rows = 20000
	for range rows {
		in.WriteString("ok," + b + "\n")
	}
	ids, invalid := collect(t, in.String(), Format{Column: "assignmentId"})
	if len(ids) != rows {
		t.Fatalf("read %d ids, want %d: the rest of the file was lost", len(ids), rows)
	}
	if len(invalid) != 1 || !strings.HasPrefix(invalid[2], `"unterminated`) {
		t.Fatalf("invalid = %v, want line 2 only", invalid)
	}
}

// TestReadCSVStrict: a quoted field may span lines; bare quotes and a quote left open past
// MaxLine are invalid records, and reading resumes after them.
func TestReadCSVStrict(t *testing.T) {
	t.Parallel()
	in := "note,id\n" +
		"\"two\nlines\"," + a + "\n" + // lines 2-3: one record
		"ba\"re," + b + "\n" + // line 4: a bare quote
		"\"" + strings.Repeat("x\n", MaxLine) + "\n" + // line 5 on: open past MaxLine
		"end," + b + "\n"
	var got []Entry
	if err := Read(strings.NewReader(in), Format{Column: "id"}, func(e Entry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) < 4 || got[0].Invalid != "" || got[0].Line != 2 || got[1].Line != 4 || got[1].Invalid == "" ||
		got[2].Line != 5 || !strings.Contains(got[2].Invalid, "not closed within") {
		t.Fatalf("entries %+v", got[:min(len(got), 4)])
	}
	if last := got[len(got)-1]; last.Invalid != "" || last.Line != MaxLine+6 {
		t.Fatalf("last entry %+v, want the id on line %d", last, MaxLine+6)
	}
}

// TestReadCSVMemory: a 40 MB CSV whose first quote never closes is read in bounded memory.
func TestReadCSVMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 40 MB")
	}
	t.Parallel()
	row := "ok," + b + "\n"
	n := 40 << 20 / len(row)
	r := io.MultiReader(strings.NewReader("note,id\n\"open,"+a+"\n"), &repeatReader{s: row, n: n})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ids := 0
	if err := Read(r, Format{Column: "id"}, func(e Entry) error {
		if e.Invalid == "" {
			ids++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if ids != n {
		t.Fatalf("read %d ids of %d", ids, n)
	}
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 16<<20 {
		t.Fatalf("heap grew by %d MiB reading the file", grew>>20)
	}
}

// repeatReader yields s n times.
type repeatReader struct {
	s   string
	n   int
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	w := 0
	for w < len(p) && r.n > 0 {
		c := copy(p[w:], r.s[r.off:])
		w += c
		r.off += c
		if r.off == len(r.s) {
			r.off, r.n = 0, r.n-1
		}
	}
	if w == 0 {
		return 0, io.EOF
	}
	return w, nil
}

func TestQuoteState(t *testing.T) {
	t.Parallel()
	for in, open := range map[string]bool{
		"a,b\n":             false,
		"\"a,b\n":           true,
		"\"a\",b\n":         false,
		"\"a\"\"b\n":        true,  // an escaped quote, still open
		"\"a\"\"\",b\n":     false, // an escaped quote, then closed
		"x,\"multi\n":       true,
		"ba\"re,b\n":        false, // a bare quote: the parser refuses it
		"\"closed at eof\"": false,
	} {
		q := quoteState{fieldStart: true}
		q.feed([]byte(in))
		if q.open() != open {
			t.Errorf("%q: open %v, want %v", in, q.open(), open)
		}
	}
}
