package idlist

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
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
