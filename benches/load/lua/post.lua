-- Pass-through: a 1 KiB (1024-byte) JSON POST, e.g. an invite, to the URL's path.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local head = '{"email":"bench@example.com","role":"reader","note":"'
wrk.body = head .. string.rep("x", 1024 - #head - 2) .. '"}'
assert(#wrk.body == 1024)
