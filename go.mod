module github.com/wardiot/ward

go 1.26.8
