package wire

import (
	"reflect"
	"testing"
)

// FuzzFastRequest checks that the common-shape decoder accepts only what
// the general decoder accepts, with the same result.
func FuzzFastRequest(f *testing.F) {
	for _, s := range append(wireSeeds,
		`"Ping"`, ` "ListServices" `, `"ServiceStatus"`, `{"ServiceStatus":{"name":"web"}}`,
		`{"ServiceStart":{"name":""}}`, `{"ServiceLogs":{"name":"web"}}`, `{"ServiceStop":{"name":"a\"b"}}`,
		`{"ServiceStop":{"name":"a}"}}`, `{"Nope":{"name":"x"}}`, `{"Ping":{"name":"x"}}`, `{}`, `{"`, `""`,
		`{"ServiceStatus":{"name":"web"}} `, `{"ServiceStatus" :{"name":"web"}}`, `{"ServiceStatus":{"name":"web","name":"x"}}`,
	) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeCommon(data)
		if !ok {
			return
		}
		var slow Request
		if err := slow.unmarshalGeneral(data); err != nil {
			t.Fatalf("%q: fast path accepts it as %+v, the general decoder refuses it: %v", data, fast, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast path gives %+v, the general decoder %+v", data, fast, slow)
		}
	})
}

func TestFastRequestTakesInitctlShapes(t *testing.T) {
	for _, r := range []Request{{Kind: KindPing}, {Kind: KindListServices}, {Kind: KindServiceStatus, Name: "web"}, {Kind: KindServiceRestart, Name: "db-1.x"}} {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeCommon(b)
		if !ok || !reflect.DeepEqual(got, r) {
			t.Errorf("%s: fast path gives %+v, %v; want %+v", b, got, ok, r)
		}
	}
}
