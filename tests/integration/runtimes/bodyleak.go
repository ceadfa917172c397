// A Go HTTP client that never closes its response bodies (the classic leak).
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	for i := 0; i < 5; i++ {
		resp, err := http.Get(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = resp.StatusCode // resp.Body is never closed
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
}
