set -e
p=$1 by=$2 version=$3
shift 3
enter_own_dir "$p" create
tmp=$(mktemp record.XXXXXX)
{
  printf '%s\n' "krops-record 2" "by $by" "when $(date -u +%Y-%m-%dT%H:%M:%SZ)" "krops $version"
  for entry do
    fingerprint=${entry%% *} rest=${entry#* }
    kind=${rest%% *} rest=${rest#* }
    type=${rest%% *} rest=${rest#* }
    commit=${rest%% *} name=${rest#* }
    printf 'source %s %s %s %s %s\n' "$fingerprint" "$(state "$kind" "$name")" "$type" "$commit" "$name"
  done
} > "$tmp"
mv -fT -- "$tmp" record
