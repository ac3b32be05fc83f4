// Verifying walhook's requests in Go (standard library only).
//
//	go run verify.go request.json    # prints "ok" or "bad"
//
// request.json: see verify.py. In a real handler, read the raw body with
// io.ReadAll(r.Body) and verify those bytes before decoding the JSON.
package main

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

func verifyHMAC(secret string, headers map[string]string, body []byte, tolerance time.Duration) bool {
	key := []byte(secret)
	if strings.HasPrefix(secret, "whsec_") {
		decoded, err := base64.StdEncoding.DecodeString(secret[len("whsec_"):])
		if err != nil {
			return false
		}
		key = decoded
	}
	id, ts := headers["webhook-id"], headers["webhook-timestamp"]
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	if d := time.Since(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return false // stale or replayed
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	expected := mac.Sum(nil)
	// One "v1,<base64>" per secret while secrets rotate.
	for _, entry := range strings.Fields(headers["webhook-signature"]) {
		version, sig, _ := strings.Cut(entry, ",")
		given, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && version == "v1" && hmac.Equal(given, expected) {
			return true
		}
	}
	return false
}

func verifyJiandaoyun(secret string, query, headers map[string]string, body []byte) bool {
	h := sha1.New()
	h.Write([]byte(query["nonce"] + ":"))
	h.Write(body)
	h.Write([]byte(":" + secret + ":" + query["timestamp"]))
	expected := hex.EncodeToString(h.Sum(nil))
	return subtle.ConstantTimeCompare([]byte(headers["x-jdy-signature"]), []byte(expected)) == 1
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var req struct {
		Secret  string            `json:"secret"`
		Scheme  string            `json:"scheme"`
		Headers map[string]string `json:"headers"`
		Query   map[string]string `json:"query"`
		Body    string            `json:"body"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		panic(err)
	}
	var ok bool
	if req.Scheme == "hmac" {
		ok = verifyHMAC(req.Secret, req.Headers, []byte(req.Body), 5*time.Minute)
	} else {
		ok = verifyJiandaoyun(req.Secret, req.Query, req.Headers, []byte(req.Body))
	}
	if ok {
		fmt.Println("ok")
	} else {
		fmt.Println("bad")
	}
}
