#!/usr/bin/env bash
# Usage: shared_exports.sh LIBRARY SONAME ARCHIVE INCLUDE_DIR
# Succeeds when the shared library LIBRARY has the SONAME SONAME and exports the public API and
# nothing else. A symbol is public when it is a C symbol repatch_abi_*, or a C++ name of namespace
# repatch (directly, or in repatch::abi, repatch::detail or repatch::triggers) whose entity (the
# class, function or variable right below the namespace) is named in the code of a header of
# INCLUDE_DIR/repatch, comments and strings left out; never one of the internal namespaces
# (repatch::engine, sync, x86, text, base, test, trigger, triggers::text) nor the engine's opaque
# Engine::Impl and booted_impl(). Typeinfo and vtables count as their class. Checks both ways:
# every symbol LIBRARY exports (nm -D --defined-only) is public, and every public symbol that
# ARCHIVE (the static library, made of the same objects) defines, other than a weak definition
# (inline code every program makes for itself), is exported by LIBRARY. Exit status: 0 clean;
# 1 a wrong SONAME, an export that is not public or a public symbol not exported, each named on
# its own line; 2 a file missing.
set -u
[ $# -eq 4 ] || { echo "usage: shared_exports.sh LIBRARY SONAME ARCHIVE INCLUDE_DIR"; exit 2; }
library=$1 soname=$2 archive=$3 include_dir=$4
for f in "$library" "$archive"; do
  [ -f "$f" ] || { echo "missing: $f"; exit 2; }
done
headers=("$include_dir"/repatch/*.h)
[ -f "${headers[0]}" ] || { echo "missing: headers in $include_dir/repatch"; exit 2; }
status=0

actual_soname=$(readelf -d "$library" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$actual_soname" != "$soname" ]; then
  echo "wrong SONAME in $library: '${actual_soname:-none}', expected '$soname'"
  status=1
fi

# "<type> <demangled name>" per defined symbol; nm prints "address type name".
symbols() {
  nm -C "$@" --defined-only 2>/dev/null | sed -n 's/^[0-9a-f]* \([A-Za-z]\) /\1 /p'
}

# Prints its input's first 40 lines, then how many more there are.
first_lines() {
  local text
  text=$(cat)
  echo "$text" | head -n 40
  local count
  count=$(echo "$text" | wc -l)
  [ "$count" -le 40 ] || echo "... and $((count - 40)) more"
}

# Reads "<type> <name>" lines; prints "<public|internal:why> <type> <name>".
classify() {
  awk -v header_list="${headers[*]}" '
    BEGIN {
      n = split(header_list, files, " ")
      for (i = 1; i <= n; i++) {
        while ((getline line < files[i]) > 0) {
          gsub(/"([^"\\]|\\.)*"/, " ", line)
          sub(/\/\/.*/, "", line)
          m = split(line, tokens, /[^A-Za-z0-9_]+/)
          for (j = 1; j <= m; j++) if (tokens[j] != "") declared[tokens[j]] = 1
        }
        close(files[i])
      }
      split("engine sync x86 text base test trigger", list, " ")
      for (i in list) internal_namespace[list[i]] = 1
    }
    function verdict(name,    qualified, parts, count, entity) {
      sub(/^(typeinfo name for|typeinfo for|vtable for|VTT for|construction vtable for|guard variable for|non-virtual thunk to|virtual thunk to|TLS init function for|TLS wrapper function for) /, "", name)
      if (name ~ /^repatch_abi_[A-Za-z0-9_]+$/) return "public"
      if (name !~ /^repatch::/) return "internal:not-of-repatch"
      qualified = name
      sub(/[(<[ ].*/, "", qualified)
      count = split(qualified, parts, "::")
      if (parts[2] in internal_namespace) return "internal:namespace-repatch::" parts[2]
      if (parts[2] == "triggers" && parts[3] == "text") return "internal:namespace-repatch::triggers::text"
      if (parts[2] == "Engine" && parts[3] == "Impl") return "internal:Engine::Impl"
      if (parts[2] == "booted_impl") return "internal:booted_impl"
      entity = parts[2]
      if (entity == "abi" || entity == "detail" || entity == "triggers") entity = parts[3]
      if (count < 2 || entity == "" || !(entity in declared)) return "internal:not-in-a-public-header"
      return "public"
    }
    {
      type = $1
      name = substr($0, 3)
      print verdict(name), type, name
    }'
}

exported=$(symbols -D "$library" | classify)
if [ -z "$exported" ]; then
  echo "$library exports nothing"
  status=1
fi
wrong=$(echo "$exported" | grep -v '^public ' | sort -u)
if [ -n "$wrong" ]; then
  echo "$wrong" | sed 's/^internal:\([^ ]*\) [A-Za-z] \(.*\)$/exports \2 (\1)/' | first_lines
  status=1
fi

# Strong definitions of the archive that are public: each must be among the exports.
exported_names=$(echo "$exported" | cut -d' ' -f3- | sort -u)
public_strong=$(symbols "$archive" | grep -E '^[TDBRG] ' | classify | grep '^public ' |
  cut -d' ' -f3- | sort -u)
missing=$(comm -23 <(echo "$public_strong") <(echo "$exported_names"))
if [ -n "$missing" ]; then
  echo "$missing" | sed "s|^|does not export |;s|\$|, which $(basename "$archive") defines|" | first_lines
  status=1
fi

if [ $status -eq 0 ]; then
  count=$(echo "$exported" | wc -l)
  echo "$library: SONAME $soname, $count symbols exported, all public; every public symbol of" \
    "$(basename "$archive") exported"
fi
exit $status
