// Command go-example serves the tasks example API: point DATABASE_URL at
// pgtenant's router and send requests with an X-Tenant header.
//
//	DATABASE_URL=postgres://postgres@127.0.0.1:6432/app go run ./examples/go
//	curl -H 'X-Tenant: acme' -d '{"name":"launch","tasks":["plan"]}' localhost:8080/projects
package main

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/examples/go/tasks"
)

func main() {
	pool, err := pgxpool.New(context.Background(), os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, (&tasks.Store{Pool: pool}).Handler()))
}
