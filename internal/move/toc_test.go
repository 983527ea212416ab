package move

import "testing"

func TestTOCSplit(t *testing.T) {
	tests := []struct {
		line       string
		post, skip bool
	}{
		{"215; 1259 16390 TABLE shard_0005 items postgres", false, false},
		{"3245; 2606 16400 CONSTRAINT shard_0005 items items_pkey postgres", false, false},
		{"3250; 1259 16410 INDEX shard_0005 items_account postgres", true, false},
		{"3260; 2606 16420 FK CONSTRAINT shard_0005 items items_account_id_fkey postgres", true, false},
		{"3270; 2620 16430 TRIGGER shard_0005 items items_fill postgres", true, false},
		{"3280; 0 0 ACL shard_0005 TABLE items postgres", false, false},
		{"3290; 6106 16440 PUBLICATION TABLES IN SCHEMA - pgtenant_move_5_1 shard_0005 postgres", false, true},
		{"3291; 6106 16441 PUBLICATION TABLE - p items", false, true},
		{"216; 1259 16391 SEQUENCE shard_0005 items_id_seq postgres", false, false},
		{"217; 1259 16392 VIEW shard_0005 account_items postgres", false, false},
		{"; comment", false, false},
	}
	for _, tt := range tests {
		if got := isPostData(tt.line); got != tt.post {
			t.Errorf("isPostData(%q) = %v, want %v", tt.line, got, tt.post)
		}
		if got := isSkipped(tt.line); got != tt.skip {
			t.Errorf("isSkipped(%q) = %v, want %v", tt.line, got, tt.skip)
		}
	}
}
