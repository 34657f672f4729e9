package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/reprocessor/reprocessor/worker"
)

// eventSchemas compiles the JSON Schemas of schemas/events, under the URLs the events'
// dataschema names.
func eventSchemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := map[string]*jsonschema.Schema{}
	for _, kind := range append(slicesClone(worker.Outcomes), worker.KindStateChanged) {
		path := filepath.Join("..", "schemas", "events", kind+".v1.json")
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		url := worker.DataSchema(kind)
		if err := c.AddResource(url, doc); err != nil {
			t.Fatal(err)
		}
		if out[url], err = c.Compile(url); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return out
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// checkEvents validates raw CloudEvents: the envelope as DESIGN section 3 gives it, and the
// data against the schema its dataschema names. It returns the kinds seen.
func checkEvents(t *testing.T, raw [][]byte, source string) map[string]int {
	t.Helper()
	schemas := eventSchemas(t)
	kinds := map[string]int{}
	for _, b := range raw {
		var env map[string]json.RawMessage
		if err := json.Unmarshal(b, &env); err != nil {
			t.Errorf("not JSON: %v: %s", err, b)
			continue
		}
		str := func(k string) string {
			var s string
			_ = json.Unmarshal(env[k], &s)
			return s
		}
		kind := strings.TrimPrefix(str("type"), worker.TypePrefix)
		kinds[kind]++
		switch {
		case str("specversion") != "1.0" || str("id") == "" || str("datacontenttype") != "application/json":
			t.Errorf("envelope of %s", b)
		case str("source") != source:
			t.Errorf("source %q, want the deployment's %q", str("source"), source)
		case str("instance") == "":
			t.Errorf("no instance extension attribute: %s", b)
		}
		sch, ok := schemas[str("dataschema")]
		if !ok {
			t.Errorf("dataschema %q names no schema of schemas/events: %s", str("dataschema"), b)
			continue
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(env["data"]))
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s data does not match %s: %v\n%s", kind, str("dataschema"), err, env["data"])
		}
	}
	return kinds
}

// eventCollector keeps the raw events a core NATS subscription hears.
type eventCollector struct {
	mu  sync.Mutex
	raw [][]byte
}

func (c *eventCollector) add(b []byte) {
	c.mu.Lock()
	c.raw = append(c.raw, append([]byte(nil), b...))
	c.mu.Unlock()
}

func (c *eventCollector) all() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.raw...)
}
