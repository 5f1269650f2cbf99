fn main() {
    println!("ringcast-loadgen: not yet implemented (issue 4)");
}
