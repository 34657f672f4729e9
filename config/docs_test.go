package config

import (
	"os"
	"strings"
	"testing"
)

// TestSettingsTableMatchesDocs checks the settings table of docs/configuration.md against
// the code's own list: the same variables in the same order, each with its flag (or "env
// only") and its default as "reprocessor help" prints it.
func TestSettingsTableMatchesDocs(t *testing.T) {
	t.Parallel()
	text, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ env, flag, def string }
	var doc []row
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 4 {
			continue
		}
		clean := func(s string) string { return strings.Trim(strings.TrimSpace(s), "`*()") }
		doc = append(doc, row{clean(cells[0]), clean(cells[1]), clean(cells[2])})
	}
	c := Defaults()
	settings := c.settings()
	if len(doc) != len(settings) {
		t.Errorf("docs/configuration.md lists %d settings, the code %d", len(doc), len(settings))
	}
	for i, s := range settings {
		if i >= len(doc) {
			t.Errorf("%s is not in docs/configuration.md", s.env)
			continue
		}
		d := doc[i]
		if d.env != s.env {
			t.Errorf("row %d: docs say %s, the code %s", i+1, d.env, s.env)
			continue
		}
		flag := "env only"
		if n := s.flagName(); n != "" {
			flag = "--" + n
		}
		if d.flag != flag {
			t.Errorf("%s: docs give the flag %q, the code %q", s.env, d.flag, flag)
		}
		def := s.def
		if def == "" && !s.secret() {
			def = s.value.String()
		}
		if d.def != def {
			t.Errorf("%s: docs give the default %q, the code %q", s.env, d.def, def)
		}
	}
}
