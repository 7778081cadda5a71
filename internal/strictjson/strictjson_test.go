package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	ok := map[string]any{
		`{"a":[1,-2.5e3,"x\u00e9\n",true,false,null,{}],"b":{}}`: map[string]any{
			"a": []any{json.Number("1"), json.Number("-2.5e3"), "xé\n", true, false, nil, map[string]any{}},
			"b": map[string]any{},
		},
		` "\ud83d\ude00" `: "😀",
		`0`:                json.Number("0"),
		`[]`:               []any{},
	}
	for in, want := range ok {
		got, err := Decode([]byte(in), 8)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: got %#v", in, got)
		}
	}
	strict := []string{`{"a":1,"a":2}`, "\"\xff\"", `"\ud800"`, `"\ud800\u0041"`, `[[[[[[[[[1]]]]]]]]]`}
	for _, in := range strict {
		if _, err := Decode([]byte(in), 8); !errors.Is(err, ErrStrict) {
			t.Fatalf("%q: got %v, want ErrStrict", in, err)
		}
	}
	bad := []string{``, `{`, `{"a"}`, `[1,]`, `01`, `1.`, `-`, `1e`, `tru`, `{"a":1}x`, `"a` + "\n" + `"`, `{1:2}`, `"\x"`}
	for _, in := range bad {
		if _, err := Decode([]byte(in), 8); err == nil {
			t.Fatalf("%q accepted", in)
		}
	}
}

// FuzzDecode checks the decoder against encoding/json: whatever it
// accepts, encoding/json accepts with the same value; whatever
// encoding/json accepts, it accepts too unless the input breaks one of the
// strict rules.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"a":[1,2,{"b":null}],"c":"d\u0041"}`, `{"a":1,"a":2}`, `[1e5,-0.5,"\ud83d\ude00"]`, `"\ud800"`, "\"\xff\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := Decode(b, 16)
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var want any
		stdErr := d.Decode(&want)
		if stdErr == nil && d.InputOffset() != int64(len(bytes.TrimRight(b, " \t\r\n"))) {
			stdErr = errors.New("trailing data")
		}
		switch {
		case err == nil && stdErr != nil:
			t.Fatalf("accepted what encoding/json refuses (%v): %q", stdErr, b)
		case err == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("value differs from encoding/json for %q:\n%#v\n%#v", b, got, want)
		case err != nil && stdErr == nil && !errors.Is(err, ErrStrict):
			t.Fatalf("refused valid JSON %q: %v", b, err)
		}
		if err != nil && strings.Contains(err.Error(), "\x00") {
			t.Fatal("error holds raw input")
		}
	})
}
