package worker

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	t.Parallel()
	const id = "0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12"
	tests := []struct {
		name    string
		payload string
		want    Request
		code    string
	}{
		{"plain id", id, Request{ID: id}, ""},
		{"plain id with white space", " \t" + id + "\r\n", Request{ID: id}, ""},
		{"upper case normalised", strings.ToUpper(id), Request{ID: id}, ""},
		{"json", `{"id":"` + id + `","correlationId":"run-1","requestedBy":"hr","reason":"lost group","extra":{"x":[1]}}`,
			Request{ID: id, CorrelationID: "run-1", RequestedBy: "hr", Reason: "lost group"}, ""},
		{"json upper case", `{"id":"` + strings.ToUpper(id) + `"}`, Request{ID: id}, ""},
		{"empty", "", Request{}, CodeInvalidPayload},
		{"only white space", " \n\t", Request{}, CodeInvalidPayload},
		{"not a guid", "not-a-guid", Request{}, CodeInvalidID},
		{"path traversal", "../../users", Request{}, CodeInvalidID},
		{"encoded traversal", "%2e%2e%2fusers", Request{}, CodeInvalidID},
		{"guid with query", id + "?$select=id", Request{}, CodeInvalidID},
		{"guid with path", id + "/../../users", Request{}, CodeInvalidID},
		{"guid with slash", id + "/", Request{}, CodeInvalidID},
		{"braces", "{" + id + "}", Request{}, CodeInvalidID},
		{"braces in json", `{"id":"{` + id + `}"}`, Request{}, CodeInvalidID},
		{"urn prefix", "urn:uuid:" + id, Request{}, CodeInvalidID},
		{"no hyphens", strings.ReplaceAll(id, "-", ""), Request{}, CodeInvalidID},
		{"35 chars", id[:35], Request{}, CodeInvalidID},
		{"37 chars", id + "0", Request{}, CodeInvalidID},
		{"non-hex", "0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b1g", Request{}, CodeInvalidID},
		{"two ids on a line", id + " " + id, Request{}, CodeInvalidPayload},
		{"id and a word", id + " please", Request{}, CodeInvalidID},
		{"two ids on lines", id + "\n" + id, Request{}, CodeInvalidPayload},
		{"two ids in json", `{"id":"` + id + `","id":"` + id + `"}`, Request{}, CodeInvalidPayload},
		{"json array", `["` + id + `"]`, Request{}, CodeInvalidPayload},
		{"json string", `"` + id + `"`, Request{}, CodeInvalidPayload},
		{"invalid json", `{"id":`, Request{}, CodeInvalidPayload},
		{"json trailing data", `{"id":"` + id + `"} {}`, Request{}, CodeInvalidPayload},
		{"json without id", `{"correlationId":"x"}`, Request{}, CodeInvalidPayload},
		{"json null id", `{"id":null}`, Request{}, CodeInvalidPayload},
		{"json numeric id", `{"id":42}`, Request{}, CodeInvalidPayload},
		{"json object id", `{"id":{"value":"` + id + `"}}`, Request{}, CodeInvalidPayload},
		{"json non-string reason", `{"id":"` + id + `","reason":7}`, Request{}, CodeInvalidPayload},
		{"binary garbage", "\x00\xff\xfe\x01garbage\x80", Request{}, CodeInvalidPayload},
		{"control characters", "abc\x01def", Request{}, CodeInvalidPayload},
		{"too large", strings.Repeat("a", 512*1024), Request{}, CodePayloadTooLarge},
		{"just over the limit", id + strings.Repeat(" ", MaxPayload), Request{}, CodePayloadTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.payload))
			if tt.code == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if got != tt.want {
					t.Fatalf("Decode = %+v, want %+v", got, tt.want)
				}
				return
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode error = %v, want a *DecodeError with code %s", err, tt.code)
			}
			if de.Code != tt.code {
				t.Fatalf("code = %s (%s), want %s", de.Code, de.Detail, tt.code)
			}
		})
	}
}

// FuzzDecode checks that whatever a producer sends, Decode either rejects it with a known
// code or returns an id that is exactly a lower-case GUID, safe to place in a URL.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12", `{"id":"0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12"}`,
		"../../users", "%2e%2e%2fusers", "{0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12}", `{"id":1}`, "", "\x00\xff",
		`{"id":"0C5A5B2E-7F1C-4B4E-9A53-6A1F0E0D9B12","id":"x"}`, "urn:uuid:0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := Decode(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			switch de.Code {
			case CodeInvalidPayload, CodeInvalidID, CodePayloadTooLarge:
			default:
				t.Fatalf("unexpected code %q", de.Code)
			}
			return
		}
		if len(req.ID) != 36 {
			t.Fatalf("id %q is not 36 characters", req.ID)
		}
		for i, c := range []byte(req.ID) {
			hyphen := i == 8 || i == 13 || i == 18 || i == 23
			if hyphen != (c == '-') || (!hyphen && !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f')) {
				t.Fatalf("id %q is not a lower-case GUID", req.ID)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct{ name, data string }{
		{"bare id", "0C5A5B2E-7F1C-4B4E-9A53-6A1F0E0D9B12"},
		{"json", `{"id":"0c5a5b2e-7f1c-4b4e-9a53-6a1f0e0d9b12","correlationId":"run-1"}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			data := []byte(c.data)
			for b.Loop() {
				if _, err := Decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
